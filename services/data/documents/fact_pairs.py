"""Structural pairs per fact inside a section: a sentence, list item, table row or commented command line
that states a key fact becomes pairs of its own, so facts past a section's opening are trained too.

A unit's key fact is found by the evaluator's rule (ftcommon/key_facts.py: a command in backticks, else a
number or version, else a name), and only facts that a user asks for get pairs: a command in backticks, a
setting (an upper-case identifier such as `FT_DATA_ADDRESS`; in a table, only in a column that says it
holds settings or variables, since protocol enums look the same), a port, a version or another number of
two digits or more that is not one of many in a measurement report. A code identifier, a one-digit count
or a capitalised name is a topic more than a fact. When a unit's key fact does not qualify, or was answered
before in the run (a section's opening or a "term: description" line states it, or an earlier unit asked
for it: the same port in three documents is one fact), the same rule is applied to the rest of the unit.

The question names the unit's subject and its heading context; several phrasings share one fact id, as
the heading pairs' do. The subject is, by the unit's shape:
- a prose sentence or list item: the clause that holds the fact, the fact itself masked ("stop everything
  with which command?");
- a table row: its first cell with its column header, and the header of the cell that holds the fact
  ("Which default address goes with service data?");
- a commented line of a code block (`ftctl stack down   # stops exactly ...`): the comment.
The answer is the unit itself (a table row as "header: cell" pairs; a commented line as "`command`:
comment"; a sentence over the answer bound cut at clause ends around its fact), so it is grounded in its
chunk by construction; the checks run on it all the same.
"""

import re
from collections.abc import Iterator
from dataclasses import dataclass

from ftcommon.key_facts import KeyFact, fact_tokens, find_key_fact
from services.data.documents.chunking import Chunk
from services.data.documents.pairs import STRUCTURAL, Pair, fact_id

_LIST_MARKER = re.compile(r"^\s*(?:[-*+]|\d+[.)])\s+")
# A sentence ends at . ! or ? before a capital, a backtick or an opening bracket ("e.g. foo" goes on).
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z`(\[*\"'])")
_CLAUSE_END = re.compile(r"(?<=[;,:])\s+|\s+[\u2013\u2014]\s+")
_LEADING_CONNECTOR = re.compile(r"^(?:and|or|but|then|also|so|while|with|where|which)\s+", re.IGNORECASE)
_COMMENTED_COMMAND = re.compile(r"^\s*(?P<command>[^#\s][^#]*?)\s+#\s+(?P<comment>\S.*)$")
_TABLE_SEPARATOR = re.compile(r"^\|?\s*:?-{3,}")
_SETTING = re.compile(r"^[A-Z][A-Z0-9_<>]*_[A-Z0-9_<>*]*(?:=\S*)?$")
_SETTING_COLUMN = re.compile(r"setting|variable|env", re.IGNORECASE)
_DATE = re.compile(r"\b\d{4}-\d{2}-\d{2}\b")
_COMMAND_WORDS = frozenset(
    "ftctl make python python3 .venv/bin/python pip docker kubectl helm git curl grpcurl export eval "
    "pytest bash sh".split()
)
_ANY_NUMBER = re.compile(r"\d+(?:[.,:]\d+)*")
_MEASUREMENT_NUMBERS = 5
_MIN_SUBJECT_WORDS = 4

PROSE_PHRASINGS = (
    "{topic}, in {context}: {masked}?",
    "Which {kind} does the {context} documentation give for {subject}?",
    "According to {context} ({topic}), {masked}?",
    "What is the {kind} for {subject}, under {topic}?",
    "Tell me the {kind} in {context} for {subject}.",
)
TABLE_PHRASINGS = (
    "Which {kind} goes with {subject} in {topic}?",
    "In {context}, what is the {kind} of {subject}?",
    "What does the {topic} table say about {subject}?",
    "{topic} ({context}): the {kind} of {subject}?",
    "Give the {kind} listed for {subject} in {topic}.",
)
COMMAND_PHRASINGS = (
    "Which command is it in {topic}: {subject}?",
    "In {context}, what do I run for this: {subject}?",
    "{topic} ({context}): the command for {subject}?",
    "Name the command for {subject} in {context}.",
    "Which {context} command gives this: {subject}?",
)
_PHRASINGS = {"prose": PROSE_PHRASINGS, "table": TABLE_PHRASINGS, "command": COMMAND_PHRASINGS}


@dataclass(frozen=True)
class FactUnit:
    """One fact to ask about: the answer that states it and the words its questions are made of."""

    answer: str
    fact: KeyFact
    kind: str  # what the fact is, in a question's words: command, setting, port, version, number
    shape: str  # prose | table | command: which phrasings fit
    subject: str  # what is asked about: a clause without the fact, a table row's name, a comment
    masked: str = ""  # for prose: the clause with the fact replaced by "which <kind>"


class StatedFacts:
    """What a run has answered so far: every fact of a heading or term pair's answer (its question is
    about the whole topic, so each fact in it is trained), and the one fact each per-fact pair asked for.
    A fact a per-fact answer merely mentions is still asked on its own later."""

    def __init__(self) -> None:
        self._texts: list[str] = []

    def add(self, text: str) -> None:
        """Count every fact the text states as answered."""
        self._texts.append(f" {' '.join(fact_tokens(text))} ")

    def states(self, fact: str) -> bool:
        # Whole tokens in a row, as ftcommon.key_facts.states_fact matches them.
        wanted = f" {' '.join(fact_tokens(fact))} "
        return any(wanted in text for text in self._texts)


def fact_pairs(
    chunk: Chunk, topic: str, context: str, phrasings: int, max_answer_chars: int, stated: StatedFacts
) -> list[Pair]:
    """Pairs for the chunk's facts not answered before in the run; the facts they ask join `stated`."""
    pairs: list[Pair] = []
    for unit in fact_units(chunk.text, stated, max_answer_chars):
        fact = fact_id(chunk, unit.answer)
        for template in _PHRASINGS[unit.shape][:phrasings]:
            question = template.format(
                topic=topic, context=context, kind=unit.kind, subject=unit.subject, masked=unit.masked
            )
            pairs.append(
                Pair(question[:1].upper() + question[1:], unit.answer, fact, chunk, STRUCTURAL, "fact")
            )
    return pairs


def fact_units(text: str, stated: StatedFacts, max_answer_chars: int) -> Iterator[FactUnit]:
    """The units of a chunk's text that state a key fact worth asking about and not answered yet, in reading
    order, none longer than max_answer_chars; each unit's fact joins `stated` as it is yielded."""
    for paragraph in paragraphs(text):
        if paragraph.startswith(("```", "~~~")):
            units = _command_units(paragraph, stated)
        elif paragraph.startswith("|"):
            units = _table_units(paragraph, stated)
        elif (
            paragraph.startswith(("<", "{", "["))
            or paragraph.count(" | ") >= 2
            or paragraph.count('": ') >= 2
        ):
            # Raw HTML, or the tail of a table or JSON block cut by the chunker (its start is elsewhere).
            continue
        else:
            units = (
                _prose_unit(sentence.strip(), stated, max_answer_chars)
                for item in _items(paragraph)
                for sentence in _SENTENCE_END.split(item)
            )
        for unit in units:
            if unit and len(unit.answer) <= max_answer_chars:
                stated.add(unit.fact.text)  # only the fact asked: others in the answer get their own pairs
                yield unit


def paragraphs(text: str) -> list[str]:
    """Paragraphs split at blank lines, but a fenced code block (which may hold blank lines) kept whole."""
    found: list[str] = []
    open_fence = False
    for part in text.split("\n\n"):
        if open_fence:
            found[-1] = f"{found[-1]}\n\n{part}"
        elif part.strip():
            found.append(part.strip())
        open_fence ^= part.count("```") % 2 == 1
    return found


def _asked_fact(text: str, stated: StatedFacts, settings_allowed: bool = True) -> tuple[KeyFact, str] | None:
    """The text's key fact and its kind, or, when that is not worth asking or was stated before, the key
    fact of the text after it (the same rule, applied to the rest), and so on."""
    offset = 0
    while (found := find_key_fact(text[offset:])) is not None:
        fact = KeyFact(found.text, found.kind, found.start + offset, found.end + offset)
        kind = _kind(fact, text)
        if kind and (settings_allowed or kind != "setting") and not stated.states(fact.text):
            return fact, kind
        offset = fact.end
    return None


def _kind(fact: KeyFact, text: str) -> str | None:
    """What the fact is, in a question's words, or None for a fact not worth a pair of its own."""
    if fact.kind == "code":
        if _SETTING.match(fact.text):
            return "setting"
        first = fact.text.split()[0]
        return "command" if first in _COMMAND_WORDS or first.startswith("--") else None
    if fact.kind == "number":
        if (fact.text.isdigit() and len(fact.text) == 1) or _in_date(fact, text) or _in_name(fact, text):
            return None
        before = text[: fact.start].lower().split()[-3:]
        if "port" in before or "ports" in before or text[: fact.start].endswith(":"):
            return "port"
        if "." in fact.text and (
            fact.text.startswith("v") or (before and before[-1] in ("python", "version"))
        ):
            return "version"
        # A plain number among many is a measurement report's (timings, scores), rarely what is asked.
        return "number" if len(_ANY_NUMBER.findall(text)) < _MEASUREMENT_NUMBERS else None
    return None


def _in_date(fact: KeyFact, text: str) -> bool:
    """2026-12-01 is a date, not the numbers 2026 and 12: when a text was measured, rarely what is asked."""
    return any(date.start() <= fact.start < date.end() for date in _DATE.finditer(text))


def _in_name(fact: KeyFact, text: str) -> bool:
    """AVX-512 or SmolLM2-135M: the number is part of a name."""
    return fact.start >= 2 and text[fact.start - 1] == "-" and text[fact.start - 2].isalnum()


def _prose_unit(sentence: str, stated: StatedFacts, max_chars: int) -> FactUnit | None:
    asked = _asked_fact(sentence, stated)
    if asked is None:
        return None
    fact, kind = asked
    cuts = _clause_cuts(sentence)
    start, end = _fitted(cuts, fact, max_chars)
    answer = sentence[start:end].strip().rstrip(" ,;:")
    fact = KeyFact(fact.text, fact.kind, fact.start - start, fact.end - start)
    cuts = _clause_cuts(answer)
    clause_start, clause_end = _clause_around(cuts, answer, fact)
    before, after = answer[clause_start : fact.start], answer[fact.end : clause_end]
    if before.rstrip().lower().endswith(f" {kind}"):
        before = before.rstrip()[: -len(kind)]  # "on port 50051": "on which port", not "on port which port"
    subject = _trimmed(f"{before} {after}")
    if len(subject.split()) < 2:
        return None  # the clause is the fact alone: nothing to ask it by
    return FactUnit(answer, fact, kind, "prose", subject, _trimmed(f"{before}which {kind}{after}"))


def _clause_cuts(sentence: str) -> list[int]:
    """Where clauses start: the sentence's start and end, and clause ends outside brackets and backticks."""
    cuts = [0]
    for match in _CLAUSE_END.finditer(sentence):
        head = sentence[: match.start()]
        if head.count("(") == head.count(")") and head.count("`") % 2 == 0:
            cuts.append(match.end())
    return [*cuts, len(sentence)]


def _fitted(cuts: list[int], fact: KeyFact, max_chars: int) -> tuple[int, int]:
    """The longest run of whole clauses from the earliest start that holds the fact within max_chars (the
    whole sentence when it fits); the sentence itself when no run fits (then it is too long to ask)."""
    for start in (cut for cut in cuts if cut <= fact.start):
        ends = [cut for cut in cuts if fact.end <= cut <= start + max_chars]
        if ends:
            return start, ends[-1]
    return 0, cuts[-1]


def _clause_around(cuts: list[int], sentence: str, fact: KeyFact) -> tuple[int, int]:
    """The clause holding the fact, widened by its neighbours until it has a few words besides the fact."""
    inside = [cut for cut in cuts if not fact.start < cut < fact.end]
    first = max(i for i, cut in enumerate(inside[:-1]) if cut <= fact.start)
    last = first + 1
    while True:
        words = len(sentence[inside[first] : inside[last]].split()) - len(fact.text.split())
        if words >= _MIN_SUBJECT_WORDS or (first == 0 and last == len(inside) - 1):
            return inside[first], inside[last]
        if first > 0:
            first -= 1
        else:
            last += 1


def _trimmed(clause: str) -> str:
    clause = " ".join(clause.replace("()", "").replace("``", "").split()).strip(" ,;:.")
    return _LEADING_CONNECTOR.sub("", clause).rstrip(" ,;:.!?")


def _items(paragraph: str) -> list[str]:
    """A paragraph's list items (marker dropped, lines joined), or the paragraph itself as one item."""
    items: list[str] = []
    for line in paragraph.splitlines():
        if _LIST_MARKER.match(line) or not items:
            items.append(_LIST_MARKER.sub("", line).strip())
        else:
            items[-1] = f"{items[-1]} {line.strip()}"
    return items


def _table_units(table: str, stated: StatedFacts) -> Iterator[FactUnit | None]:
    lines = [line for line in table.splitlines() if line.strip()]
    if len(lines) < 3 or not _TABLE_SEPARATOR.match(lines[1]):
        return
    header = _cells(lines[0])
    for line in lines[2:]:
        cells = _cells(line)
        if len(cells) != len(header) or not cells[0]:
            continue
        # The first cell names the row (the second, when the first is a row number): a fact there (a
        # setting, a command) counts only when no other cell holds one.
        name = 1 if cells[0].isdigit() and len(cells) > 2 else 0
        for holder in [*(i for i in range(len(cells)) if i != name and cells[i] != cells[0]), name]:
            asked = _asked_fact(
                cells[holder], stated, settings_allowed=bool(_SETTING_COLUMN.search(header[holder]))
            )
            if asked and (holder != name or asked[0].kind == "code"):
                break
        else:
            continue
        fact, kind = asked
        # Asked by the row's name, for the column that holds the fact (the next one when the name holds it).
        column = holder if holder != name or len(header) == name + 1 else name + 1
        answer = "; ".join(f"{title}: {cell}" for title, cell in zip(header, cells, strict=True) if cell)
        row = f"{header[name]} {cells[name]}" if header[name] else cells[name]
        yield FactUnit(answer, fact, header[column] or kind, "table", row)


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def _command_units(block: str, stated: StatedFacts) -> Iterator[FactUnit | None]:
    for line in block.splitlines()[1:]:
        match = _COMMENTED_COMMAND.match(line)
        if not match or line.lstrip().startswith(("```", "~~~")):
            continue
        command, comment = match.group("command").strip(), match.group("comment").strip()
        if len(comment.split()) < 2 or stated.states(command):
            continue
        answer = f"`{command}`: {comment}"
        fact = find_key_fact(answer)
        if fact is not None:
            yield FactUnit(answer, fact, "command", "command", comment.rstrip(" .;:"))

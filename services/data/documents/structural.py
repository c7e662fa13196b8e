"""The structural generator: Q&A pairs from a document's shape alone, with no model.

A heading names a topic and its section says what the topic is, so a section becomes a "what" question
(or a "how" question when the heading is an action: "Install", "Wiping local data") whose answer is the
section's opening text, cut at a sentence end. A bullet or line of the form "term: description" (or
"term - description") becomes a question about the term. Every question names its context (the parent
heading or the document's title), because "What is Install?" cannot be answered without knowing which
document it is about. Each fact gets several phrasings; they share the fact's id.

The answers are extractive, so they are grounded by construction; the checks run on them all the same.
This is the floor of the yield: a small generator model that emits no usable JSON still leaves these.
Facts deeper in a section (a port in its third sentence, a command in a table) get pairs of their own
(fact_pairs.py), unless the run has answered them already.
"""

import re
from pathlib import PurePath

from services.data.documents.chunking import Chunk
from services.data.documents.fact_pairs import StatedFacts, fact_pairs, paragraphs
from services.data.documents.pairs import STRUCTURAL, Pair, fact_id

# Verbs whose heading reads as a task ("Install", "Wipe local data"): they get "how" questions.
_TASK_VERBS = frozenset(
    "add build change check clean configure connect create delete deploy disable enable evaluate export "
    "find fix get install load make migrate monitor prepare promote register remove reset restart restore "
    "rollback roll run scale serve set setup start stop test train tune update upgrade upload use wipe write".split()
)
# "term: description": a command or name in backticks, a bold name of a few words, or a plain one of
# one to three words (longer plain or bold "terms" are sentences with a colon, not names).
_DEFINITION = re.compile(
    r"^\s*(?:[-*+]|\d+[.)])?\s*(?P<term>`[^`]{2,80}`|\*\*[^*\s]+(?: [^*\s]+){0,4}\*\*"
    r"|[A-Za-z][\w./-]*(?: [\w./-]+){0,2}?)"
    r"\s*(?::|\s[-\u2013\u2014]\s)\s*(?P<description>\S.{14,})$"
)
_NOT_PROSE = ("|", "```", "~~~", "<")
_LIST_MARKER = re.compile(r"^\s*(?:[-*+]|\d+[.)])\s+")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")

WHAT_PHRASINGS = (
    "What does the {context} documentation say about {topic}?",
    "What should I know about {topic} in {context}?",
    "Can you explain {topic} for {context}?",
    "In {context}, what is {topic}?",
    "Tell me about {topic} in {context}.",
)
HOW_PHRASINGS = (
    "How do I {task} in {context}?",
    "What are the steps to {task} for {context}?",
    "In {context}, how do you {task}?",
    "What is the way to {task} with {context}?",
    "Explain how to {task} in {context}.",
)
GERUND_PHRASINGS = (
    "How does {task} work in {context}?",
    "What does the {context} documentation say about {task}?",
    "In {context}, what happens when {task}?",
    "Explain {task} in {context}.",
    "What should I know about {task} for {context}?",
)
# A document's opening section, under its title alone: questions about the document as a whole.
OVERVIEW_PHRASINGS = (
    "What does {title} cover?",
    "What is the purpose of {title}?",
    "Give an overview of {title}.",
    "What is {title} about, in short?",
    "Summarise the introduction of {title}.",
)
TERM_PHRASINGS = (
    "What does {term} do in {context}?",
    "What is {term} for in {context}?",
    "In {context}, what is {term}?",
    "Explain {term} in {context}.",
    "What is {term} used for in {context}?",
)


def structural_pairs(
    chunk: Chunk, phrasings: int, max_answer_chars: int, continuation: bool, stated: StatedFacts
) -> list[Pair]:
    """Pairs from one chunk; none when the chunk has no heading to ask about. A continuation (a later chunk
    of a section cut for size) asks no question about the heading again: the first chunk answered it.
    `stated` holds the facts the run has answered so far (none is asked again); the facts of this chunk's
    heading and term answers, and those its per-fact pairs ask, join it."""
    if not chunk.heading_path:
        return []
    topic = _clean_heading(chunk.heading_path[-1])
    context = _context(chunk)
    pairs: list[Pair] = []
    answer = "" if continuation else _opening(chunk.text, max_answer_chars)
    if answer:
        fact = fact_id(chunk, answer)
        if len(chunk.heading_path) == 1:
            questions = [("overview", t.format(title=topic)) for t in OVERVIEW_PHRASINGS[:phrasings]]
        else:
            questions = _topic_questions(topic, context, phrasings)
        for style, question in questions:
            pairs.append(Pair(question, answer, fact, chunk, STRUCTURAL, style))
        stated.add(answer)
    for line in chunk.text.splitlines():
        match = _DEFINITION.match(line)
        if not match:
            continue
        term = match.group("term").strip().strip("*")
        term_answer = _LIST_MARKER.sub("", line).strip()
        if len(term_answer) > max_answer_chars or term_answer == answer:
            continue
        fact = fact_id(chunk, term_answer)
        for template in TERM_PHRASINGS[:phrasings]:
            pairs.append(
                Pair(
                    template.format(term=term, context=context), term_answer, fact, chunk, STRUCTURAL, "term"
                )
            )
        stated.add(term_answer)
    return pairs + fact_pairs(chunk, topic, context, phrasings, max_answer_chars, stated)


def _topic_questions(topic: str, context: str, phrasings: int) -> list[tuple[str, str]]:
    if topic.lower().split()[:1] in (["what"], ["how"], ["why"], ["which"], ["when"], ["where"], ["who"]):
        # The heading is a question already ("What is inside?"): asked as it stands, with its context.
        asked = [f"{topic}, according to {context}?", f"{context}: {topic}?", f"{topic} (in {context})?"]
        return [("what", q) for q in asked[:phrasings]]
    words = topic.split()
    first = words[0].lower() if words else ""
    if first in _TASK_VERBS:
        task = _lower_first(topic)
        return [("how", t.format(task=task, context=context)) for t in HOW_PHRASINGS[:phrasings]]
    if first.endswith("ing") and len(first) > 4:
        task = _lower_first(topic)
        return [("how", t.format(task=task, context=context)) for t in GERUND_PHRASINGS[:phrasings]]
    return [("what", t.format(topic=topic, context=context)) for t in WHAT_PHRASINGS[:phrasings]]


def _context(chunk: Chunk) -> str:
    """What the topic belongs to: its parent heading, or the document's name under a lone heading."""
    if len(chunk.heading_path) >= 2:
        return _clean_heading(chunk.heading_path[-2])
    return PurePath(chunk.document).stem.replace("_", " ").replace("-", " ").strip()


def _clean_heading(heading: str) -> str:
    return re.sub(r"^[\d.]+\s+", "", heading).strip().rstrip(":?.!").strip()


def _lower_first(text: str) -> str:
    # "Install the CLI" -> "install the CLI"; an acronym or a command ("CLI", "`make`") stays as written.
    first, _, rest = text.partition(" ")
    if first[:1].isupper() and not first.isupper():
        first = first[0].lower() + first[1:]
    return f"{first} {rest}".strip()


def _opening(text: str, max_chars: int) -> str:
    """The chunk's first paragraph (more if it is short), cut at the last sentence end within max_chars."""
    # Prose only: a table, code block or raw HTML makes a poor answer to "what is X?".
    prose = [p for p in paragraphs(text) if not p.startswith(_NOT_PROSE)]
    answer = ""
    for paragraph in prose:
        candidate = f"{answer}\n\n{paragraph}".strip()
        if answer and (len(candidate) > max_chars or len(answer) >= max_chars // 3):
            break
        answer = candidate
    if len(answer) <= max_chars:
        return answer
    sentences = _SENTENCE_END.split(answer)
    kept = ""
    for sentence in sentences:
        if len(f"{kept} {sentence}".strip()) > max_chars:
            break
        kept = f"{kept} {sentence}".strip()
    return kept

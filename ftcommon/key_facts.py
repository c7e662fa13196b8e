"""The key fact of an answer, and whether a text states it: one rule for the evaluator's fact accuracy
(services/eval/metrics.py) and the documents generator's per-fact pairs (services/data/documents/).

The key fact is the first of these the text holds, in this order of precedence:
1. a command or identifier in backticks (`make clean`, `FT_DATA_ADDRESS`);
2. a number or version (3.11, 8000, 02:00, 1e-3, v2.1, 4.9M);
3. a name: a word with a capital letter inside it or a digit (vLLM, PostgreSQL, SmolLM2, FT_DATA_ADDRESS),
   or a capitalised word that does not start a sentence (Python, Kubernetes).
A text states a fact when it contains it as whole tokens, case and backticks ignored ("make clean" states
`make clean`; "3.1" does not state 3.11).
"""

import re
from dataclasses import dataclass
from typing import Literal

_BACKTICKED = re.compile(r"`([^`\n]+)`")
_NUMBER = re.compile(r"(?<![\w.])v?\d+(?:[.,:]\d+)*(?:e-?\d+)?[KMGkmg%]?(?![\w])")
_WORD = re.compile(r"[A-Za-z][\w.-]*[\w]|[A-Za-z]")
_FACT_TOKEN = re.compile(r"[a-z0-9]+(?:[._:/-][a-z0-9]+)*")
_SENTENCE_START = re.compile(r"(?:^|[.!?:]\s+|\n\s*(?:[-*]\s+)?)$")


@dataclass(frozen=True)
class KeyFact:
    text: str
    kind: Literal["code", "number", "name"]  # which rule of the precedence found it
    start: int  # where it starts in the text searched (for code: the opening backtick)
    end: int


def find_key_fact(text: str) -> KeyFact | None:
    """The text's key fact with the rule that found it and where, or None when it states none."""
    code = _BACKTICKED.search(text)
    if code and fact_tokens(code.group(1)):
        return KeyFact(code.group(1).strip(), "code", code.start(), code.end())
    number = _NUMBER.search(text)
    if number:
        return KeyFact(number.group(0), "number", number.start(), number.end())
    for word in _WORD.finditer(text):
        found = word.group(0)
        inner_capital = any(c.isupper() for c in found[1:]) or any(c.isdigit() for c in found)
        mid_sentence = found[0].isupper() and not _SENTENCE_START.search(text[: word.start()])
        if inner_capital or mid_sentence:
            return KeyFact(found, "name", word.start(), word.end())
    return None


def key_fact(text: str) -> str | None:
    """The text's key fact (see the module's docstring), or None when it states none."""
    found = find_key_fact(text)
    return found.text if found else None


def states_fact(text: str, fact: str) -> bool:
    """Whether the text holds the fact's tokens in a row (case and backticks ignored)."""
    wanted, said = fact_tokens(fact), fact_tokens(text)
    return any(said[i : i + len(wanted)] == wanted for i in range(len(said) - len(wanted) + 1))


def fact_tokens(text: str) -> list[str]:
    return _FACT_TOKEN.findall(text.lower())

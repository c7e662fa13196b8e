"""A generated question-answer pair, the fact it states, and why a pair was not kept."""

import hashlib
from dataclasses import dataclass

from services.data.documents.chunking import Chunk

STRUCTURAL = "structural"


def fact_id(chunk: Chunk, answer: str) -> str:
    """The same answer from the same place is the same fact, however the question is phrased."""
    key = "\x1f".join([chunk.document, *chunk.heading_path, " ".join(answer.split())])
    return "fact-" + hashlib.sha256(key.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Pair:
    question: str
    answer: str
    fact_id: str  # phrasings of one fact share it, so held-out phrasings can be split from trained ones
    chunk: Chunk
    generator: str  # "structural" or the generator model's name
    style: str  # what | how | term | factual | how-to | why | paraphrase

    def row(self) -> dict[str, object]:
        """The dataset row: question and answer, plus where it came from (kept in the raw file)."""
        return {
            "question": self.question,
            "answer": self.answer,
            "fact_id": self.fact_id,
            "document": self.chunk.document,
            "location": self.chunk.location,
            "heading_path": list(self.chunk.heading_path),
            "generator": self.generator,
            "style": self.style,
        }


@dataclass(frozen=True)
class Rejected:
    pair: Pair
    reason: str  # a short code the report counts by: too_short, ungrounded, eval_contamination, ...
    detail: str  # the same in words, naming what failed

    def to_json(self) -> dict[str, object]:
        return {**self.pair.row(), "reason": self.reason, "detail": self.detail}

"""Blocks -> chunks: one section (heading path) at a time, bounded in characters, with overlap.

A chunk never spans two sections, so a heading is always the chunk's own topic. Blocks of one section
are joined until the next would pass `max_chars`; a section that does not fit is cut there, and the
next chunk starts with the last `overlap_chars` of the previous one (cut at a word) so a fact that
straddles the cut is whole in at least one chunk. One block longer than `max_chars` is cut at sentence
ends (or words) the same way. Characters, not tokens: the generator's tokenizer is not known here, and
a bound in characters holds for any of them (about 4 characters a token for English).
"""

import re
from dataclasses import dataclass

from ftcommon.errors import InvalidArgument
from ftcommon.specs.generate import DEFAULT_CHUNK_MAX_CHARS, DEFAULT_CHUNK_OVERLAP_CHARS
from services.data.documents.parsers import Block

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


@dataclass(frozen=True)
class ChunkSettings:
    max_chars: int = DEFAULT_CHUNK_MAX_CHARS
    overlap_chars: int = DEFAULT_CHUNK_OVERLAP_CHARS

    def check(self, field_prefix: str) -> None:
        if self.max_chars <= 0:
            raise InvalidArgument("must be a positive number of characters", field=f"{field_prefix}max_chars")
        if not 0 <= self.overlap_chars < self.max_chars // 2:
            raise InvalidArgument(
                f"must be at least 0 and under half of max_chars ({self.max_chars // 2})",
                field=f"{field_prefix}overlap_chars",
            )


@dataclass(frozen=True)
class Chunk:
    document: str
    index: int  # 0-based within its document
    heading_path: tuple[str, ...]
    location: str  # of its first block: "line 12", "page 3", "paragraph 7"
    text: str

    @property
    def chunk_id(self) -> str:
        return f"{self.document}#{self.index}"

    def to_json(self) -> dict[str, object]:
        return {
            "document": self.document,
            "index": self.index,
            "heading_path": list(self.heading_path),
            "location": self.location,
            "chars": len(self.text),
        }


def chunk_blocks(document: str, blocks: list[Block], settings: ChunkSettings) -> list[Chunk]:
    settings.check("chunk_")
    chunks: list[Chunk] = []
    pieces: list[str] = []
    path: tuple[str, ...] | None = None
    location = ""

    def close() -> None:
        if pieces:
            chunks.append(Chunk(document, len(chunks), path or (), location, "\n\n".join(pieces)))

    for block in blocks:
        if block.heading_path != path:
            close()
            pieces, path, location = [], block.heading_path, block.location
        for number, part in enumerate(_split_long(block.text, settings)):
            joined = len("\n\n".join([*pieces, part]))
            if pieces and joined > settings.max_chars:
                close()
                # The windows of one long block overlap already; only a new block takes the previous tail.
                tail = _tail(chunks[-1].text, settings.overlap_chars) if number == 0 else ""
                pieces = [tail] if tail and len(tail) + 2 + len(part) <= settings.max_chars else []
                location = block.location
            pieces.append(part)
    close()
    return chunks


def _split_long(text: str, settings: ChunkSettings) -> list[str]:
    """The block itself, or windows of at most max_chars cut at sentence ends (words, if need be)."""
    if len(text) <= settings.max_chars:
        return [text]
    units = [u for s in _SENTENCE_END.split(text) for u in _words_within(s, settings.max_chars)]
    windows: list[str] = []
    current = ""
    for unit in units:
        candidate = f"{current} {unit}".strip()
        if current and len(candidate) > settings.max_chars:
            windows.append(current)
            tail = _tail(current, settings.overlap_chars)
            current = f"{tail} {unit}".strip() if len(tail) + 1 + len(unit) <= settings.max_chars else unit
        else:
            current = candidate
    if current:
        windows.append(current)
    return windows


def _words_within(sentence: str, limit: int) -> list[str]:
    """A sentence longer than the limit as runs of whole words (a word longer than it, cut)."""
    if len(sentence) <= limit:
        return [sentence]
    runs: list[str] = []
    current = ""
    for word in sentence.split():
        while len(word) > limit:
            if current:
                runs.append(current)
                current = ""
            runs.append(word[:limit])
            word = word[limit:]
        if current and len(current) + 1 + len(word) > limit:
            runs.append(current)
            current = word
        else:
            current = f"{current} {word}".strip()
    if current:
        runs.append(current)
    return runs


def _tail(text: str, size: int) -> str:
    """The last `size` characters of the text, starting at a word."""
    if size <= 0 or not text:
        return ""
    tail = text[-size:]
    if len(text) > size and not text[-size - 1].isspace():
        cut = tail.find(" ")
        tail = tail[cut + 1 :] if cut >= 0 else ""
    return tail.strip()

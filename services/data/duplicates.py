"""Exact and near duplicate rows.

Exact: equal after normalisation (case, punctuation and spacing ignored). Near: Jaccard similarity of
word 3-shingles at or above a threshold, found with MinHash signatures and LSH banding (so the cost
grows with the rows, not their pairs) and then confirmed on the real shingle sets.
"""

import re
import zlib
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from services.data.records import Conversation

NUM_PERMUTATIONS = 128
BANDS = 32  # 32 bands of 4 rows: pairs above ~0.5 similarity almost surely become candidates
SHINGLE_WORDS = 3
_SIGNATURE_SEED = 20240611  # fixed, so the same file always gives the same report
_ROWS_PER_BATCH = 20_000  # bounds the (shingles x permutations) matrix to tens of MB
_NON_WORD = re.compile(r"[^0-9a-z]+")


@dataclass(frozen=True)
class DuplicateGroup:
    lines: list[int]
    exact: bool
    similarity: float


def normalise(text: str) -> str:
    return _NON_WORD.sub(" ", text.lower()).strip()


def conversation_key(conversation: Conversation) -> str:
    return "\n".join(f"{m['role']}:{normalise(m['content'])}" for m in conversation.messages)


def find_duplicates(conversations: Sequence[Conversation], threshold: float) -> list[DuplicateGroup]:
    """Exact groups (every line), then near groups (one line per exact group), each sorted by line."""
    by_key: dict[str, list[Conversation]] = defaultdict(list)
    for conversation in conversations:
        by_key[conversation_key(conversation)].append(conversation)
    groups = [
        DuplicateGroup(sorted(c.line for c in members), exact=True, similarity=1.0)
        for members in by_key.values()
        if len(members) > 1
    ]
    representatives = [members[0] for members in by_key.values()]
    groups.extend(_near_groups(representatives, threshold))
    return sorted(groups, key=lambda g: g.lines[0])


def _shingles(conversation: Conversation) -> set[str]:
    words = " ".join(normalise(m["content"]) for m in conversation.messages).split()
    if len(words) < SHINGLE_WORDS:
        return {" ".join(words)} if words else set()
    return {" ".join(words[i : i + SHINGLE_WORDS]) for i in range(len(words) - SHINGLE_WORDS + 1)}


def _signatures(shingle_sets: Sequence[set[str]]) -> np.ndarray:
    rng = np.random.default_rng(_SIGNATURE_SEED)
    # Multiply-shift hashing: odd multipliers, wrapping uint64 arithmetic, the high 32 bits kept.
    multipliers = rng.integers(1, 2**63, NUM_PERMUTATIONS, dtype=np.uint64) | np.uint64(1)
    offsets = rng.integers(0, 2**63, NUM_PERMUTATIONS, dtype=np.uint64)
    signatures = np.full((len(shingle_sets), NUM_PERMUTATIONS), np.iinfo(np.uint64).max, dtype=np.uint64)
    for start in range(0, len(shingle_sets), _ROWS_PER_BATCH):
        batch = shingle_sets[start : start + _ROWS_PER_BATCH]
        hashes = np.fromiter(
            (zlib.crc32(s.encode()) for shingles in batch for s in shingles), dtype=np.uint64
        )
        sizes = np.fromiter((len(s) for s in batch), dtype=np.int64, count=len(batch))
        if not hashes.size:
            continue
        with np.errstate(over="ignore"):
            permuted = (hashes[:, None] * multipliers[None, :] + offsets[None, :]) >> np.uint64(32)
        nonempty = sizes > 0
        starts = np.concatenate(([0], np.cumsum(sizes)[:-1]))[nonempty]
        signatures[start : start + len(batch)][nonempty] = np.minimum.reduceat(permuted, starts, axis=0)
    return signatures


def _buckets(signatures: np.ndarray, usable: np.ndarray) -> Iterable[list[int]]:
    """Rows whose signatures agree on a whole band: each bucket holds likely near duplicates."""
    rows_per_band = NUM_PERMUTATIONS // BANDS
    indexes = np.flatnonzero(usable)
    for band in range(BANDS):
        part = np.ascontiguousarray(signatures[indexes, band * rows_per_band : (band + 1) * rows_per_band])
        buckets: dict[bytes, list[int]] = defaultdict(list)
        for position, index in enumerate(indexes):
            buckets[part[position].tobytes()].append(int(index))
        yield from (members for members in buckets.values() if len(members) > 1)


def _near_groups(conversations: Sequence[Conversation], threshold: float) -> list[DuplicateGroup]:
    shingle_sets = [_shingles(c) for c in conversations]
    signatures = _signatures(shingle_sets)
    usable = np.array([bool(s) for s in shingle_sets], dtype=bool)
    parent = list(range(len(conversations)))
    weakest: dict[int, float] = {}

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for members in _buckets(signatures, usable):
        # Each member is compared with the bucket's first one only (not every pair), and rows already
        # grouped are skipped: templated data, where thousands of rows share a bucket, stays linear.
        anchor = members[0]
        for other in members[1:]:
            ra, rb = root(anchor), root(other)
            if ra == rb:
                continue
            # The signatures estimate the similarity; only plausible pairs pay for the exact one.
            if (
                np.count_nonzero(signatures[anchor] == signatures[other])
                < (threshold - 0.15) * NUM_PERMUTATIONS
            ):
                continue
            a, b = shingle_sets[anchor], shingle_sets[other]
            similarity = len(a & b) / len(a | b)
            if similarity < threshold:
                continue
            parent[rb] = ra
            weakest[ra] = min(similarity, weakest.pop(ra, 1.0), weakest.pop(rb, 1.0))
    members_of: dict[int, list[int]] = defaultdict(list)
    for index in range(len(conversations)):
        members_of[root(index)].append(conversations[index].line)
    return [
        DuplicateGroup(sorted(lines), exact=False, similarity=round(weakest[r], 4))
        for r, lines in members_of.items()
        if len(lines) > 1
    ]


def line_groups(groups: Iterable[DuplicateGroup]) -> dict[int, int]:
    """Line -> the smallest line it is (transitively) duplicated with: rows sharing a value stay together."""
    parent: dict[int, int] = {}

    def root(line: int) -> int:
        parent.setdefault(line, line)
        while parent[line] != line:
            parent[line] = parent[parent[line]]
            line = parent[line]
        return line

    for group in groups:
        first = root(group.lines[0])
        for line in group.lines[1:]:
            other = root(line)
            if other != first:
                parent[max(first, other)] = min(first, other)
                first = min(first, other)
    return {line: root(line) for line in list(parent)}

"""Distinct rows -> what prepare writes for each: the example's JSON body, its token counts, and whether it
was kept whole, truncated or dropped; on this process and, for large datasets, one helper process at once.

Prepare's per-row work (rendering, tokenizing, labels, each example's JSON) is Python and tiktoken, about
11 s of CPU per 100,000 rows, and none of it shares out over threads: tiktoken keeps the GIL (two threads
encoding halves of the rows took 4.5 s against 4.6 s in one), processes do share (halves in two
processes: 2.5 s and 3.7 s against 4.8 s). So a helper process takes batches from the front while this one
takes them from the back, until they meet. The helper hands back finished bodies, not token id lists:
unpickling 100,000 rows' ids costs 1.1 s in the receiving process, their bodies' text a tenth of that.
It is spawned, not forked (the service's gRPC threads make fork unsafe), and loads the tokenizer while
this process loads and scans the rows. A helper that dies leaves its batches to this process: the job
finishes, one core slower. Spawning imports the program's main module again in the helper, as
multiprocessing does, so a program that runs the data service in its own process must start it under
`if __name__ == "__main__":` (the service's and the benchmarks' entry points do).
"""

import enum
import gc
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from multiprocessing import get_context
from typing import Any, NamedTuple

from ftcommon import prepared_layout
from services.data.records import Message
from services.data.tiktoken_twin import TiktokenTwin, adopt_twin, twin_of
from services.data.tokenization import (
    IGNORE_INDEX,
    PieceIds,
    conversation_key,
    distinct_examples,
    preference_examples,
)

logger = logging.getLogger(__name__)

# A distinct row: its messages (a preference pair's chosen answer last) and a pair's rejected answer.
Row = tuple[list[Message], str | None]
# Batches a helper holds at once: one it works on, one waiting, so it never idles between them.
_HELPER_QUEUE = 2
_ORPHAN_CHECK_SECONDS = 0.5


class Outcome(enum.IntEnum):
    KEPT = 0
    TRUNCATED = 1  # cut to max_seq_len (truncation policy "truncate")
    DROPPED = 2  # longer than max_seq_len, or left with no answer token when cut


class RowEncoding(NamedTuple):
    """A named tuple, not a dataclass: the helper's batches of them unpickle here 3-6x faster (2,048 rows:
    2.7 against 7-17 ms, on the process that encodes the most)."""

    body: str  # prepared_layout.example_body; empty for a dropped row
    tokens: int  # ids of every sequence (a pair: both sides)
    trained_tokens: int  # labelled ids of every sequence
    outcome: Outcome


@dataclass(frozen=True)
class EncodingRecipe:
    """What every batch of a prepare is encoded with (sent to the helper with each batch)."""

    chat_template: str
    end_of_turn: str
    max_seq_len: int
    keep_truncated: bool


def encode_batch(
    tokenizer: Any, recipe: EncodingRecipe, rows: Sequence[Row], pieces: PieceIds | None = None
) -> list[RowEncoding]:
    """The rows' encodings; a batch holds one kind of row (plain conversations or preference pairs), each
    row distinct (prepare encodes one row of each set of exact duplicates). `pieces`: text pieces earlier
    batches of the same prepare encoded with this tokenizer (tokenization.py)."""
    messages = [row[0] for row in rows]
    if rows and rows[0][1] is not None:
        rejected = [row[1] or "" for row in rows]
        pairs = preference_examples(
            tokenizer, messages, rejected, recipe.end_of_turn, recipe.chat_template, pieces
        )
        return [
            _row_encoding(recipe, [chosen, other], row[0], text)
            for (chosen, other), row, text in zip(pairs, rows, rejected, strict=True)
        ]
    keys = list(map(conversation_key, messages))
    examples = distinct_examples(tokenizer, keys, recipe.end_of_turn, recipe.chat_template, pieces)
    return [
        _row_encoding(recipe, [example], row[0], None) for example, row in zip(examples, rows, strict=True)
    ]


def _row_encoding(
    recipe: EncodingRecipe,
    sequences: list[tuple[list[int], list[int]]],
    messages: list[Message],
    rejected: str | None,
) -> RowEncoding:
    limit, outcome = recipe.max_seq_len, Outcome.KEPT
    if any(len(ids) > limit for ids, _ in sequences):
        # A truncated example (or either side of a pair) that lost every answer token trains nothing.
        if not recipe.keep_truncated or any(
            labels[:limit].count(IGNORE_INDEX) == len(labels[:limit]) for _, labels in sequences
        ):
            return RowEncoding("", 0, 0, Outcome.DROPPED)
        sequences = [(ids[:limit], labels[:limit]) for ids, labels in sequences]
        outcome = Outcome.TRUNCATED
    (ids, labels), *other = sequences
    answer = prepared_layout.RejectedAnswer(*other[0], rejected or "") if other else None
    return RowEncoding(
        prepared_layout.example_body(ids, labels, messages, answer),
        sum(len(ids) for ids, _ in sequences),
        sum(len(labels) - labels.count(IGNORE_INDEX) for _, labels in sequences),
        outcome,
    )


class EncodingHelper:
    """One helper process with the tokenizer loaded; a context manager that ends the process on exit."""

    def __init__(self, tokenizer: Any, tokenizer_dir: str) -> None:
        """`tokenizer`: this process's, loaded from tokenizer_dir; the helper loads one of its class from
        there and takes this one's tiktoken twin."""
        self._pool = ProcessPoolExecutor(
            max_workers=1,
            mp_context=get_context("spawn"),
            initializer=_start_helper,
            initargs=(os.getpid(), type(tokenizer), tokenizer_dir),
        )
        # Starts the process (and its tokenizer loading) now, while the caller loads the rows. The twin
        # (600 KB) goes as a task, written to the helper by the pool's thread: as an initializer's argument
        # this thread would write it, blocked until the helper had imported the tokenizer's class (0.8 s).
        self._started = self._pool.submit(_take_twin, twin_of(tokenizer))

    def __enter__(self) -> "EncodingHelper":
        return self

    def __exit__(self, *_: object) -> None:
        # Not waited for: a helper still loading its tokenizer (a job with few distinct rows) ends by itself.
        self._pool.shutdown(wait=False, cancel_futures=True)

    def ready(self) -> bool:
        """Whether the helper has loaded its tokenizer (and not died doing so)."""
        return self._started.done() and self._started.exception() is None

    def submit(self, recipe: EncodingRecipe, rows: Sequence[Row]) -> "Future[list[RowEncoding]]":
        return self._pool.submit(_encode_in_helper, recipe, list(rows))


def encode_batches(
    tokenizer: Any,
    recipe: EncodingRecipe,
    batches: Sequence[Sequence[Row]],
    helper: EncodingHelper | None,
    batch_done: Callable[[int], None],
) -> list[list[RowEncoding]]:
    """Every batch's encodings, in order: with a helper it takes batches from the front, once it is ready, and
    this process from the back (a few batches are all done here before a helper has started). batch_done(rows)
    is called after each batch (to report progress and to stop if asked). A helper that dies (killed, out of
    memory, or unable to start) leaves its batches to this process."""
    results: list[list[RowEncoding] | None] = [None] * len(batches)
    mine = list(range(len(batches)))  # batches not yet handed out; the helper pops the front, this the back
    in_flight: dict[Future[list[RowEncoding]], int] = {}
    helper_alive = helper is not None
    pieces = PieceIds()
    while mine or in_flight:
        while (
            helper is not None and helper_alive and helper.ready() and len(in_flight) < _HELPER_QUEUE and mine
        ):
            try:
                in_flight[helper.submit(recipe, batches[mine[0]])] = mine[0]
            except BrokenProcessPool:
                helper_alive = False
                break
            mine.pop(0)
        if mine:
            index = mine.pop()
            results[index] = encode_batch(tokenizer, recipe, batches[index], pieces)
            batch_done(len(batches[index]))
        else:
            wait(in_flight, return_when=FIRST_COMPLETED)
        for future in [f for f in in_flight if f.done()]:
            index = in_flight.pop(future)
            try:
                results[index] = future.result()
            except BrokenProcessPool:
                logger.warning("the encoding helper process died; this process encodes the rest")
                helper_alive = False
                mine.append(index)
                continue
            batch_done(len(batches[index]))
    return results  # type: ignore[return-value]  # every index was filled above


_helper_tokenizer: Any = None
# The helper's own PieceIds: a helper lives for one prepare, so its pieces are that prepare's.
_helper_pieces = PieceIds()


def _start_helper(parent_pid: int, tokenizer_class: type, tokenizer_dir: str) -> None:
    # The collector stays off for the helper's life, which is one prepare, as it is paused for prepare's own
    # encoding (collection_pause.py): with it on, a batch took the helper 210 ms against 130. Off for the
    # whole process, not around each batch's encoding: unpickling a batch (~20,000 new containers) comes
    # before that and walked the helper's piece ids too (whole encodings 5% slower, six alternating rounds).
    gc.disable()
    threading.Thread(target=_exit_when_orphaned, args=(parent_pid,), daemon=True).start()
    _load_tokenizer(tokenizer_class, tokenizer_dir)


def _exit_when_orphaned(parent_pid: int) -> None:
    """Ends the helper when its parent is gone: a pool's worker holds both ends of its task queue, so a parent
    killed outright (SIGKILL, out of memory) would otherwise leave it waiting forever with the tokenizer
    loaded (~400 MB)."""
    while os.getppid() == parent_pid:
        time.sleep(_ORPHAN_CHECK_SECONDS)
    os._exit(1)


def _load_tokenizer(tokenizer_class: type, tokenizer_dir: str) -> None:
    """The class the service's tokenizer has (AutoTokenizer's choice, passed by reference): importing just
    its module takes ~1 s, importing AutoTokenizer ~5 s (transformers then imports torch)."""
    global _helper_tokenizer
    _helper_tokenizer = tokenizer_class.from_pretrained(tokenizer_dir)


def _take_twin(twin: TiktokenTwin | None) -> None:
    """The service's tiktoken twin for the helper's tokenizer (see tiktoken_twin.adopt_twin); submitted first,
    so the process starts at once, and done when the helper is ready to encode."""
    adopt_twin(_helper_tokenizer, twin)


def _encode_in_helper(recipe: EncodingRecipe, rows: list[Row]) -> list[RowEncoding]:
    return encode_batch(_helper_tokenizer, recipe, rows, _helper_pieces)

"""Distinct rows -> what prepare writes for each: the example's JSON body, its token counts, and whether it
was kept whole, truncated or dropped; on this process and, for large datasets, one helper process at once.

Prepare's per-row work (rendering, tokenizing, labels, each example's JSON) is Python and tiktoken, about
11 s of CPU per 100,000 rows, and none of it shares out over threads: tiktoken keeps the GIL (two threads
encoding halves of the rows took 4.5 s against 4.6 s in one), processes do share (halves in two
processes: 2.5 s and 3.7 s against 4.8 s). So a helper process takes batches from the front while this one
takes them from the back, until they meet. The helper hands back finished bodies, not token id lists:
unpickling 100,000 rows' ids costs 1.1 s in the receiving process, their bodies' text a tenth of that.
The helper is not forked from this process (the service's gRPC threads make fork unsafe) but from
multiprocessing's fork server: a single-threaded process, one per service process, started with the first
helper, that imports the tokenizer's module and the main module of a program run with `python -m` once (it
then holds ~150 MB). A helper forked from it is ready in 0.4-0.6 s (loading the tokenizer) against 2.8-3.6 s
spawned afresh under the data service's entry point (importing transformers 1.2 s, the service's modules
1.4 s, both again for every prepare), so it is ready by the time this process has loaded and scanned the
rows. A helper that dies leaves its batches to this process: the job finishes, one core slower. A main
module run as a script is run again in each helper, as multiprocessing does, so a program that runs the data
service in its own process must start it under `if __name__ == "__main__":` (the service's and the
benchmarks' entry points do).
"""

import contextlib
import enum
import gc
import logging
import os
import sys
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from multiprocessing import get_context
from multiprocessing.connection import Connection
from multiprocessing.context import BaseContext
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
        context = _fork_server(type(tokenizer))
        # The helper holds the read end of a pipe whose only write end is this process's: it sees the pipe
        # close when this process ends, however it ends (its parent is the fork server, not this process).
        parent_alive, self._alive = context.Pipe(duplex=False)
        self._pool = ProcessPoolExecutor(
            max_workers=1,
            mp_context=context,
            initializer=_start_helper,
            initargs=(parent_alive, type(tokenizer), tokenizer_dir),
        )
        self._twin_taken: Future[None] | None = None  # the first task; set by the starting thread
        self._start_tried = threading.Event()
        # Started by a thread of its own, so that the caller goes on loading the rows: starting a helper
        # waits for the fork server to be up, which the first time means its imports (1.2-2.6 s).
        threading.Thread(target=self._start, args=(twin_of(tokenizer), parent_alive), daemon=True).start()

    def _start(self, twin: TiktokenTwin | None, parent_alive: Connection) -> None:
        try:
            # The process starts with the first task; the twin (600 KB) goes as that task, not as an
            # initializer's argument, which would be written before the helper had imported anything.
            self._twin_taken = self._pool.submit(_take_twin, twin)
        except RuntimeError:  # the caller was done before the helper started
            pass
        except (OSError, BrokenProcessPool) as error:  # no process to be had: ready() stays false
            logger.warning("prepare encodes on one core: no helper process (%s)", error)
        finally:
            parent_alive.close()  # the helper, if started, has its own copy
            self._start_tried.set()

    def __enter__(self) -> "EncodingHelper":
        return self

    def __exit__(self, *_: object) -> None:
        # Not waited for: closing the pipe ends the helper at once, even one still loading its tokenizer (a
        # job with few distinct rows).
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._alive.close()

    def ready(self) -> bool:
        """Whether the helper has loaded its tokenizer (and not died doing so)."""
        taken = self._twin_taken
        return taken is not None and taken.done() and taken.exception() is None

    def submit(self, recipe: EncodingRecipe, rows: Sequence[Row]) -> "Future[list[RowEncoding]]":
        self._start_tried.wait()  # the twin goes first
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


def _fork_server(tokenizer_class: type) -> BaseContext:
    """multiprocessing's forkserver context, its server importing the tokenizer's module and the main module
    of a program run with `python -m` (a helper would import that module again: multiprocessing prepares
    each child so). The list only counts when the server starts, with the first helper of this process."""
    context = get_context("forkserver")
    main_module = getattr(sys.modules["__main__"].__spec__, "name", "")
    preload = [tokenizer_class.__module__]
    if main_module and not main_module.endswith("__main__"):
        preload.append(main_module)
    context.set_forkserver_preload(preload)
    return context


def _start_helper(parent_alive: Connection, tokenizer_class: type, tokenizer_dir: str) -> None:
    # The collector stays off for the helper's life, which is one prepare, as it is paused for prepare's own
    # encoding (collection_pause.py): with it on, a batch took the helper 210 ms against 130. Off for the
    # whole process, not around each batch's encoding: unpickling a batch (~20,000 new containers) comes
    # before that and walked the helper's piece ids too (whole encodings 5% slower, six alternating rounds).
    gc.disable()
    threading.Thread(target=_exit_when_orphaned, args=(parent_alive,), daemon=True).start()
    _load_tokenizer(tokenizer_class, tokenizer_dir)


def _exit_when_orphaned(parent_alive: Connection) -> None:
    """Ends the helper when the process that started it is gone: a pool's worker holds both ends of its task
    queue, so a parent killed outright (SIGKILL, out of memory) would otherwise leave it waiting forever with
    the tokenizer loaded (~400 MB). Nothing is ever sent on the pipe: reading returns only at its end."""
    with contextlib.suppress(EOFError, OSError):
        parent_alive.recv_bytes()
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

"""Pausing Python's cyclic garbage collector while a stage builds many objects that all stay alive.

Tokenizing 100,000 rows makes hundreds of thousands of id lists that live until the files are written.
Each time enough new containers pile up the collector walks every one of them again, and the oldest
generation is walked whenever it grew by a quarter: 3-4 s of a 10 s tokenize stage went to walks that freed
nothing (measured with gc.callbacks). What these stages build holds no reference cycles that must be freed
early, so collection waits until they end; memory freed by reference counting is freed as always.

The pause is process-wide, so overlapping pauses (jobs on other threads) share it: the first turns
collection off, the last turns it back on, and only if it was on before the first.
"""

import contextlib
import gc
import threading
from collections.abc import Iterator

_lock = threading.Lock()
_holders = 0
_was_enabled = False


@contextlib.contextmanager
def collection_paused() -> Iterator[None]:
    global _holders, _was_enabled
    with _lock:
        if _holders == 0:
            _was_enabled = gc.isenabled()
            gc.disable()
        _holders += 1
    try:
        yield
    finally:
        with _lock:
            _holders -= 1
            if _holders == 0 and _was_enabled:
                gc.enable()

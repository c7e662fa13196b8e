"""Engine processes die with the gateway, also when the gateway itself is killed with SIGKILL.

vLLM starts its EngineCore (and EngineCore its Workers) with multiprocessing's spawn method: a fresh
interpreter exec'd from `multiprocessing.spawn.get_executable()`. While an engine starts, that executable is a
small launcher that asks the kernel to SIGKILL the child when its parent goes away (PR_SET_PDEATHSIG; the
request survives exec) and then execs the real interpreter. The launcher also points the child's own spawns
at itself, so the Workers die with their EngineCore the same way.

The launcher hands the interpreter the CPUs of its parent, not the ones its own start left it with: vLLM starts
its Workers with libgomp preloaded and GOMP_CPU_AFFINITY set, which pins whatever process loads it (this launcher
too) to the first listed CPU, and an OpenMP runtime that starts pinned to one CPU throttles its spin-waits and
sleeps at every barrier (decoding a quarter slower on 2 cores: 41 against 54 tokens/s at concurrency 1).

The kernel sends the signal when the *thread* that started the child ends, so engines start on
ENGINE_STARTER, one thread that lives as long as the process.
"""

import contextlib
import logging
import multiprocessing
import multiprocessing.spawn
import os
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ftcommon.logs import log_fields

logger = logging.getLogger(__name__)

PARENT_PID_ENV = "FT_ENGINE_PARENT_PID"

# Its one worker thread is never retired, so the children it spawns die only with the process.
ENGINE_STARTER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="engine-start")

_LAUNCHER = """#!{python} -I
import ctypes, os, signal, sys
args = sys.argv[1:]
if "--multiprocessing-fork" in args:  # a spawned worker; other helpers (resource tracker) run unchanged
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1: PR_SET_PDEATHSIG
    if os.getppid() != int(os.environ.get({parent_env!r}, "0")):
        sys.exit(1)  # the parent died before the signal was armed
    # Starting this launcher pinned it to one CPU when vLLM preloads libgomp with GOMP_CPU_AFFINITY; the
    # interpreter exec'd below would inherit that, and its OpenMP would see one CPU and sleep at every barrier.
    os.sched_setaffinity(0, os.sched_getaffinity(os.getppid()))
    code = args.index("-c") + 1
    args[code] = {prelude!r} + args[code]
os.execv({python!r}, [{python!r}, *args])
"""


def write_launcher(folder: Path) -> Path:
    """The launcher script for this interpreter, written once per folder."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "engine-launcher"
    prelude = (
        f"import multiprocessing, os; os.environ[{PARENT_PID_ENV!r}] = str(os.getpid()); "
        f"multiprocessing.set_executable({str(path)!r}); "
    )
    text = _LAUNCHER.format(python=sys.executable, parent_env=PARENT_PID_ENV, prelude=prelude)
    if not path.exists() or path.read_text() != text:
        staging = path.with_suffix(f".{os.getpid()}.tmp")
        staging.write_text(text)
        staging.chmod(0o755)
        staging.replace(path)
    return path


@contextlib.contextmanager
def children_die_with_this_process(folder: Path) -> Iterator[None]:
    """Processes spawned inside this block (and their spawned children) are killed when their parent dies.
    A no-op off Linux, where prctl does not exist."""
    if sys.platform != "linux":
        yield
        return
    launcher = write_launcher(folder)
    if not os.access(launcher, os.X_OK):  # a noexec mount; the process records remain the backstop
        log_fields(logger, logging.WARNING, "engine launcher cannot run here", path=str(launcher))
        yield
        return
    previous_executable = multiprocessing.spawn.get_executable()
    previous_parent = os.environ.get(PARENT_PID_ENV)
    multiprocessing.set_executable(str(launcher))
    os.environ[PARENT_PID_ENV] = str(os.getpid())
    try:
        yield
    finally:
        multiprocessing.set_executable(os.fsdecode(previous_executable))
        if previous_parent is None:
            os.environ.pop(PARENT_PID_ENV, None)
        else:
            os.environ[PARENT_PID_ENV] = previous_parent

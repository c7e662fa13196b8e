"""A record of the gateway's engine processes in its data directory, so that a restarted gateway can end what
its predecessor left running before it loads a second copy of the model.

The parent-death signal normally takes engine processes down with the gateway; this is the backstop for
whatever escaped it (a process that reset its signal, a host where prctl is missing). Processes are identified
by pid and start time (from /proc), so a pid reused by an unrelated process is never touched.
"""

import contextlib
import json
import logging
import os
import signal
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

from ftcommon.logs import log_fields

logger = logging.getLogger(__name__)

_PROC = Path("/proc")
_GONE_WAIT_SECONDS = 10.0


@dataclass(frozen=True)
class ProcessId:
    pid: int
    started: int  # clock ticks after boot, from /proc/<pid>/stat

    @classmethod
    def of(cls, pid: int) -> "ProcessId | None":
        started = _start_time(pid)
        return None if started is None else cls(pid, started)

    def alive(self) -> bool:
        return _start_time(self.pid) == self.started


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name (which may contain spaces), or None if gone."""
    try:
        text = (_PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()


def _start_time(pid: int) -> int | None:
    fields = _stat_fields(pid)
    # A zombie has already died; only its exit status waits to be collected.
    if fields is None or fields[0] == "Z":
        return None
    return int(fields[19])  # field 22 of stat: starttime


def descendants(pid: int) -> set[ProcessId]:
    """Every live process below `pid` in the process tree."""
    children: dict[int, list[int]] = {}
    for entry in _PROC.iterdir():
        if entry.name.isdigit() and (fields := _stat_fields(int(entry.name))) is not None:
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    found: set[ProcessId] = set()
    pending = list(children.get(pid, []))
    while pending:
        current = pending.pop()
        if (process := ProcessId.of(current)) is not None:
            found.add(process)
        pending.extend(children.get(current, []))
    return found


class EngineProcessRecords:
    """One JSON file per gateway under `folder`: the process that owns it and its engines' processes."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.owner = ProcessId.of(os.getpid())
        self._engines: dict[str, list[ProcessId]] = {}  # model id -> its engine's processes
        # Tests run several gateways in one process; each keeps its own file.
        self._path = folder / f"engines-{os.getpid()}-{uuid.uuid4().hex[:8]}.json"

    def record(self, model_id: str, processes: set[ProcessId]) -> None:
        self._engines[model_id] = sorted(processes, key=lambda p: p.pid)
        self._write()

    def forget(self, model_id: str) -> None:
        if self._engines.pop(model_id, None) is not None:
            self._write()

    def remove(self) -> None:
        self._engines.clear()
        self._path.unlink(missing_ok=True)

    def _write(self) -> None:
        if self.owner is None:  # no /proc: nothing to identify processes by
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        body = {
            "owner": asdict(self.owner),
            "engines": {model: [asdict(p) for p in procs] for model, procs in self._engines.items()},
        }
        staging = self._path.with_suffix(".tmp")
        staging.write_text(json.dumps(body))
        staging.replace(self._path)

    def end_leftovers(self) -> int:
        """Kills the recorded engine processes of gateways that are gone; returns how many were running."""
        ended: list[ProcessId] = []
        for path in sorted(self.folder.glob("engines-*.json")):
            try:
                body = json.loads(path.read_text())
                owner = ProcessId(**body["owner"])
                processes = [ProcessId(**p) for procs in body["engines"].values() for p in procs]
            except (OSError, ValueError, KeyError, TypeError):
                log_fields(
                    logger, logging.WARNING, "unreadable engine process record removed", path=str(path)
                )
                path.unlink(missing_ok=True)
                continue
            if owner.alive():  # another gateway sharing this data directory; its engines are its own
                continue
            for process in processes:
                if process.alive():
                    with contextlib.suppress(ProcessLookupError):  # it ended on its own meanwhile
                        os.kill(process.pid, signal.SIGKILL)
                    ended.append(process)
            path.unlink(missing_ok=True)
        deadline = time.monotonic() + _GONE_WAIT_SECONDS
        while any(p.alive() for p in ended) and time.monotonic() < deadline:
            time.sleep(0.05)
        if ended:
            log_fields(
                logger,
                logging.WARNING,
                "ended engine processes a previous gateway left running",
                pids=[p.pid for p in ended],
            )
        return len(ended)

"""What a local stack started, on disk (<data root>/stack.json), and how to stop exactly those processes.

Each service runs in its own process group. The record keeps every group's leader pid and the leader's
start time, so a later `ftctl stack down` (also after the process that started them was killed) signals
only groups it started: a pid the kernel has since given to an unrelated process has another start time.
"""

import json
import os
import signal
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

RECORD_NAME = "stack.json"


@dataclass
class RecordedProcess:
    name: str
    pid: int  # also the process group id: each service leads its own group
    start_ticks: int  # /proc/<pid>/stat start time, tells this process from a later one with the same pid
    log: str


@dataclass
class StackRecord:
    data_root: str
    ports: dict[str, int]
    data_dirs: dict[str, str]
    exports: dict[str, str]
    processes: list[RecordedProcess] = field(default_factory=list)
    # The `ftctl stack up` (or demo) process while it is still starting services; None once it is done.
    supervisor: RecordedProcess | None = None
    started_at: float = field(default_factory=time.time)

    def save(self, path: Path) -> None:
        """Atomically, so a reader (or a crash mid-write) never sees half a record."""
        staging = path.with_name(path.name + ".partial")
        staging.write_text(json.dumps(asdict(self), indent=2))
        staging.replace(path)

    @classmethod
    def load(cls, path: Path) -> "StackRecord | None":
        if not path.exists():
            return None
        raw = json.loads(path.read_text())
        supervisor = raw.pop("supervisor", None)
        processes = [RecordedProcess(**p) for p in raw.pop("processes", [])]
        return cls(
            **raw,
            processes=processes,
            supervisor=RecordedProcess(**supervisor) if supervisor else None,
        )

    def running(self) -> list[RecordedProcess]:
        return [p for p in self.processes if group_alive(p)]


def record_path(data_root: Path) -> Path:
    return data_root / RECORD_NAME


def start_ticks(pid: int) -> int | None:
    """The process's start time in clock ticks since boot, or None when no such process exists."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # Field 22; the command name (field 2) may hold spaces and parentheses, so count after the last ')'.
    return int(stat[stat.rindex(")") + 2 :].split()[19])


def describe(pid: int) -> RecordedProcess:
    ticks = start_ticks(pid)
    if ticks is None:
        raise ProcessLookupError(pid)
    return RecordedProcess(name="supervisor", pid=pid, start_ticks=ticks, log="")


def _live_members(pgid: int) -> list[int]:
    """Pids in the group that are not zombies (a zombie no longer runs; its reaper may never come)."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except (FileNotFoundError, ProcessLookupError):
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        state, group = fields[0], int(fields[2])
        if group == pgid and state not in ("Z", "X"):
            members.append(int(entry.name))
    return members


def is_ours(process: RecordedProcess) -> bool:
    """False when the group's leader pid now belongs to another process. While any member of our group
    lives, the kernel does not hand its id out again, so a missing leader still means: the group is ours."""
    ticks = start_ticks(process.pid)
    return ticks is None or ticks == process.start_ticks


def group_alive(process: RecordedProcess) -> bool:
    return is_ours(process) and bool(_live_members(process.pid))


def _signal_group(process: RecordedProcess, signum: int) -> None:
    try:
        os.killpg(process.pid, signum)
    except ProcessLookupError:
        pass


def stop_supervisor(supervisor: RecordedProcess | None, grace: float) -> None:
    """A `stack up` still starting services is asked to stop them itself, so none starts after we look."""
    if supervisor is None or start_ticks(supervisor.pid) != supervisor.start_ticks:
        return
    os.kill(supervisor.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while start_ticks(supervisor.pid) == supervisor.start_ticks and time.monotonic() < deadline:
        time.sleep(0.1)


def stop_groups(processes: list[RecordedProcess], grace: float) -> list[str]:
    """SIGTERM to every live group (services drain), SIGKILL to those still alive after `grace` seconds.
    Returns the names of the groups that had to be killed."""
    alive = [p for p in processes if group_alive(p)]
    for process in alive:
        _signal_group(process, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while alive and time.monotonic() < deadline:
        time.sleep(0.2)
        alive = [p for p in alive if _live_members(p.pid)]
    for process in alive:
        _signal_group(process, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while any(_live_members(p.pid) for p in alive) and time.monotonic() < deadline:
        time.sleep(0.1)
    return [p.name for p in alive]

"""Runs the four services (and a trainer worker) as separate local processes, for `ftctl stack`, `make demo`
and the end-to-end tests: loopback ports, one data root, logs under <data root>/logs, every process in its
own process group and recorded in <data root>/stack.json (see ftctl/stack_record.py).
"""

import errno
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import ClassVar

import grpc
import httpx
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ftcommon.settings import ServiceAddresses
from ftctl.base_model import SETUP_MODEL_DIR
from ftctl.stack_record import (
    RecordedProcess,
    StackRecord,
    describe,
    record_path,
    start_ticks,
    stop_groups,
)

LOOPBACK = "127.0.0.1"
# Process name -> module; started in this order. The worker runs training jobs for the trainer.
SERVICE_MODULES = {
    "trainer": "services.trainer.server",
    "trainer-worker": "services.trainer.worker",
    "data": "services.data.server",
    "eval": "services.eval.server",
    "inference": "services.inference.server",
    "console": "services.console.server",
}
# Env prefix of each process's settings (FT_<PREFIX>_DATA_DIR and so on).
SETTINGS_PREFIX = {
    "trainer": "TRAINER",
    "trainer-worker": "TRAINER",
    "data": "DATA",
    "eval": "EVAL",
    "inference": "INFERENCE",
    "console": "CONSOLE",
}
SERVICE_PREFIXES = ("DATA", "TRAINER", "EVAL", "INFERENCE", "CONSOLE")
STOP_GRACE_SECONDS = 20.0


class StackError(Exception):
    """A stack cannot start or be found; the message says why and what to do."""


@dataclass(frozen=True)
class StackPorts:
    data: int = 50051
    trainer: int = 50052
    eval: int = 50053
    inference: int = 50054
    gateway: int = 8000
    console: int = 8080

    # Field -> (who listens there, the variable that moves it).
    LISTENERS: ClassVar[dict[str, tuple[str, str]]] = {
        "data": ("data", "FT_DATA_PORT"),
        "trainer": ("trainer", "FT_TRAINER_PORT"),
        "eval": ("eval", "FT_EVAL_PORT"),
        "inference": ("inference gRPC", "FT_INFERENCE_PORT"),
        "gateway": ("inference HTTP gateway", "FT_INFERENCE_HTTP_PORT"),
        "console": ("web console", "FT_CONSOLE_PORT"),
    }

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] = os.environ) -> "StackPorts":
        """The ports each service's settings would read from the same variables."""
        values: dict[str, int] = {}
        for name, (_, variable) in cls.LISTENERS.items():
            raw = environ.get(variable, "").strip()
            if not raw:
                continue
            if not raw.isdigit() or not 0 < int(raw) < 65536:
                raise StackError(f"{variable}={raw!r} is not a port number (1-65535)")
            values[name] = int(raw)
        return cls(**values)

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def check_free(self, host: str = LOOPBACK) -> None:
        """Raises StackError naming the first port that is taken (or given to two services)."""
        seen: dict[int, str] = {}
        for name, port in self.as_dict().items():
            service, variable = self.LISTENERS[name]
            if port in seen:
                raise StackError(f"port {port} is given to both {seen[port]} and {service} ({variable})")
            seen[port] = service
            if port_in_use(port, host):
                raise StackError(
                    f"port {port} for the {service} service is already in use on {host}: "
                    f"stop what listens there or set {variable} to a free port"
                )

    def with_free_ports(self, host: str = LOOPBACK) -> tuple["StackPorts", list[str]]:
        """The same layout with every taken port swapped for a free one, and a note for each swap."""
        changes: dict[str, int] = {}
        notes = []
        for name, port in self.as_dict().items():
            if port_in_use(port, host) or port in changes.values():
                changes[name] = free_port(host)
                notes.append(f"port {port} ({self.LISTENERS[name][0]}) is taken: using {changes[name]}")
        return replace(self, **changes), notes

    def addresses(self) -> ServiceAddresses:
        return ServiceAddresses(
            data_address=f"{LOOPBACK}:{self.data}",
            trainer_address=f"{LOOPBACK}:{self.trainer}",
            eval_address=f"{LOOPBACK}:{self.eval}",
            inference_address=f"{LOOPBACK}:{self.inference}",
            gateway_url=f"http://{LOOPBACK}:{self.gateway}",
        )

    def exports(self) -> dict[str, str]:
        """The variables a shell needs so that ftctl and apps find this stack."""
        addresses = self.addresses()
        return {
            "FT_DATA_ADDRESS": addresses.data_address,
            "FT_TRAINER_ADDRESS": addresses.trainer_address,
            "FT_EVAL_ADDRESS": addresses.eval_address,
            "FT_INFERENCE_ADDRESS": addresses.inference_address,
            "FT_GATEWAY_URL": addresses.gateway_url,
        }


def port_in_use(port: int, host: str = LOOPBACK) -> bool:
    # No SO_REUSEADDR/SO_REUSEPORT: bind fails for any listener, including gRPC's reuse-port sockets.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((host, port))
        except OSError as err:
            if err.errno == errno.EADDRINUSE:
                return True
            raise
    return False


def free_port(host: str = LOOPBACK) -> int:
    return free_ports(1, host)[0]


def free_ports(count: int, host: str = LOOPBACK) -> list[int]:
    """Ports free now and distinct from each other: every probe socket stays bound until all are chosen."""
    probes = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for probe in probes:
            probe.bind((host, 0))
        return [probe.getsockname()[1] for probe in probes]
    finally:
        for probe in probes:
            probe.close()


def service_data_dirs(data_root: Path, environ: Mapping[str, str] = os.environ) -> dict[str, Path]:
    """Every service keeps its data under the stack's root unless its own FT_<SERVICE>_DATA_DIR says
    otherwise. Absolute, so a command run from another directory means the same folders."""
    return {
        prefix: Path(environ.get(f"FT_{prefix}_DATA_DIR") or data_root).resolve()
        for prefix in SERVICE_PREFIXES
    }


def refuse_running_stack(data_root: Path) -> None:
    """Raises StackError when a stack recorded in `data_root` still runs: its data must not be wiped."""
    record = StackRecord.load(record_path(data_root.resolve()))
    if record is not None and record.running():
        raise StackError(
            f"a stack recorded in {record_path(data_root.resolve())} is running: "
            f"stop it with `ftctl stack down --data-dir {data_root}` or use another data directory"
        )


@dataclass
class LocalStack:
    data_root: Path
    ports: StackPorts
    extra_env: dict[str, str] = field(default_factory=dict)
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.data_root = self.data_root.resolve()
        self.data_dirs = service_data_dirs(self.data_root, {**os.environ, **self.extra_env})
        self.record = StackRecord(
            data_root=str(self.data_root),
            ports=self.ports.as_dict(),
            data_dirs={prefix: str(path) for prefix, path in self.data_dirs.items()},
            exports=self.ports.exports(),
            supervisor=describe(os.getpid()),
        )

    @property
    def log_dir(self) -> Path:
        return self.data_root / "logs"

    def environment(self) -> dict[str, str]:
        addresses = self.ports.addresses()
        env = {
            **os.environ,
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            # A stack on this machine's loopback: plaintext, and no token unless FT_SERVICE_TOKEN is set.
            "FT_INSECURE_LOCAL_DEV": "1",
            **self.ports.exports(),
            "FT_DATA_PORT": str(self.ports.data),
            "FT_TRAINER_PORT": str(self.ports.trainer),
            "FT_EVAL_PORT": str(self.ports.eval),
            "FT_INFERENCE_PORT": str(self.ports.inference),
            "FT_INFERENCE_HTTP_PORT": str(self.ports.gateway),
            "FT_CONSOLE_PORT": str(self.ports.console),
            # The console is a client only: its own accounts live here; it finds the others by FT_*_ADDRESS.
            "FT_CONSOLE_DATA_DIR": str(self.data_dirs["CONSOLE"]),
        }
        services = {
            "DATA": addresses.data_address,
            "TRAINER": addresses.trainer_address,
            "EVAL": addresses.eval_address,
            "INFERENCE": addresses.inference_address,
        }
        for service in services:
            env[f"FT_{service}_DATA_DIR"] = str(self.data_dirs[service])
            # Each service's own settings name the others it calls.
            for other, address in services.items():
                if other != service:
                    env[f"FT_{service}_{other}_ADDRESS"] = address
        if "FT_TRAINER_MODEL_ROOTS" not in env:
            # The trainer's default roots follow its working directory (./var/base_models); the stack
            # may start from anywhere and registers the folder `make setup` converted.
            roots = [self.data_dirs["TRAINER"] / "base_models", SETUP_MODEL_DIR.parent]
            env["FT_TRAINER_MODEL_ROOTS"] = json.dumps([str(root) for root in roots])
        env.update(self.extra_env)
        return env

    def save_record(self) -> None:
        self.data_root.mkdir(parents=True, exist_ok=True)
        self.record.save(record_path(self.data_root))

    def start(self, name: str) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"{name}.log"
        with open(log_path, "ab") as log:
            # A new session per child: it outlives `stack up`, ignores the terminal's Ctrl-C, and one
            # killpg stops it and anything it spawned (training children).
            process = subprocess.Popen(
                [sys.executable, "-m", SERVICE_MODULES[name]],
                env=self.environment(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.processes[name] = process
        ticks = start_ticks(process.pid)
        self.record.processes.append(
            RecordedProcess(name=name, pid=process.pid, start_ticks=ticks or 0, log=str(log_path))
        )
        self.save_record()

    def restart(self, name: str, environment: dict[str, str], deadline: float) -> None:
        """Stops one service and starts it again with more environment (the console, once the gateway
        has handed out the credentials it needs), recording the new process in place of the old."""
        old = [p for p in self.record.processes if p.name == name]
        stop_groups(old, STOP_GRACE_SECONDS)
        if name in self.processes:
            self.processes.pop(name).wait()  # reap our own child
        self.record.processes = [p for p in self.record.processes if p.name != name]
        self.extra_env.update(environment)
        self.start(name)
        if name == "console":
            self.wait_http(name, f"{self.console_url}/healthz", deadline)

    def wait_grpc(self, name: str, address: str, deadline: float) -> None:
        with grpc.insecure_channel(address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while True:
                self.check_alive(name)
                try:
                    reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=2)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    pass
                if time.monotonic() > deadline:
                    raise StackError(f"{name} did not become healthy at {address}; see {self.log_tail(name)}")
                time.sleep(0.3)

    def wait_http(self, name: str, url: str, deadline: float) -> None:
        while True:
            self.check_alive(name)
            try:
                if httpx.get(url, timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise StackError(f"{name} did not answer {url} with 200; see {self.log_tail(name)}")
            time.sleep(0.3)

    def check_alive(self, name: str) -> None:
        process = self.processes[name]
        if process.poll() is not None:
            raise StackError(f"{name} exited with status {process.returncode}; {self.log_tail(name)}")

    def log_tail(self, name: str, chars: int = 3000) -> str:
        log = self.log_dir / f"{name}.log"
        tail = log.read_text(errors="replace")[-chars:] if log.exists() else ""
        return f"its log {log} ends with:\n{tail}"

    def wait_healthy(self, deadline: float) -> None:
        addresses = self.ports.addresses()
        grpc_addresses = {
            "trainer": addresses.trainer_address,
            "data": addresses.data_address,
            "eval": addresses.eval_address,
            "inference": addresses.inference_address,
        }
        for name, address in grpc_addresses.items():
            if name in self.processes:
                self.wait_grpc(name, address, deadline)
        if "inference" in self.processes:
            # Ready, not merely up: the default model is loaded and answers.
            self.wait_http("inference", f"{addresses.gateway_url}/readyz", deadline)
        if "console" in self.processes:
            self.wait_http("console", f"{self.console_url}/healthz", deadline)
        if "trainer-worker" in self.processes:
            self.check_alive("trainer-worker")

    @property
    def console_url(self) -> str:
        return f"http://{LOOPBACK}:{self.ports.console}"

    def detach(self) -> None:
        """The services keep running after this process ends; the record says how to stop them."""
        self.record.supervisor = None
        self.save_record()

    def stop(self) -> None:
        stop_groups(self.record.processes, STOP_GRACE_SECONDS)
        for process in self.processes.values():
            process.wait()  # reap our own children
        self.processes.clear()
        record_path(self.data_root).unlink(missing_ok=True)


def start_services(
    stack: LocalStack, timeout: float, on_progress: Callable[[str], None] = lambda _: None
) -> None:
    """The trainer first, so the default base model is registered before the gateway looks for it."""
    from ftctl.base_model import ensure_default_base_model

    deadline = time.monotonic() + timeout
    stack.start("trainer")
    trainer_address = stack.ports.addresses().trainer_address
    stack.wait_grpc("trainer", trainer_address, deadline)
    on_progress(f"trainer serving at {trainer_address}")
    on_progress(ensure_default_base_model(trainer_address, stack.data_dirs["TRAINER"]))
    for name in ("trainer-worker", "data", "eval", "inference", "console"):
        stack.start(name)
    stack.wait_healthy(deadline)


@contextmanager
def stopping_on_signals() -> Iterator[None]:
    """SIGTERM (as from `ftctl stack down` while we start) unwinds like Ctrl-C, so cleanup runs."""
    previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def running_stack(
    data_root: Path, ports: StackPorts | None = None, timeout: float = 600, **extra_env: str
) -> Iterator[LocalStack]:
    """Starts every service, waits until each is healthy, and stops them all on exit or Ctrl-C."""
    stack = LocalStack(data_root=data_root, ports=ports or StackPorts(), extra_env=extra_env)
    stack.ports.check_free()
    with stopping_on_signals():
        try:
            start_services(stack, timeout)
            yield stack
        finally:
            stack.stop()

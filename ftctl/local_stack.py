"""Runs the four services (and a trainer worker) as separate local processes, as `make demo` and the
end-to-end tests need: loopback ports, one data root, logs under <data root>/logs, and no orphans.
"""

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import httpx
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ftcommon.settings import ServiceAddresses


@dataclass(frozen=True)
class StackPorts:
    data: int = 50051
    trainer: int = 50052
    eval: int = 50053
    inference: int = 50054
    gateway: int = 8000

    def addresses(self) -> ServiceAddresses:
        return ServiceAddresses(
            data_address=f"127.0.0.1:{self.data}",
            trainer_address=f"127.0.0.1:{self.trainer}",
            eval_address=f"127.0.0.1:{self.eval}",
            inference_address=f"127.0.0.1:{self.inference}",
            gateway_url=f"http://127.0.0.1:{self.gateway}",
        )


@dataclass
class LocalStack:
    data_root: Path
    ports: StackPorts
    extra_env: dict[str, str] = field(default_factory=dict)
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)

    def environment(self) -> dict[str, str]:
        addresses = self.ports.addresses()
        env = {
            **os.environ,
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "FT_DATA_ADDRESS": addresses.data_address,
            "FT_TRAINER_ADDRESS": addresses.trainer_address,
            "FT_EVAL_ADDRESS": addresses.eval_address,
            "FT_INFERENCE_ADDRESS": addresses.inference_address,
            "FT_GATEWAY_URL": addresses.gateway_url,
            "FT_DATA_PORT": str(self.ports.data),
            "FT_TRAINER_PORT": str(self.ports.trainer),
            "FT_EVAL_PORT": str(self.ports.eval),
            "FT_INFERENCE_PORT": str(self.ports.inference),
            "FT_INFERENCE_HTTP_PORT": str(self.ports.gateway),
        }
        services = {
            "DATA": addresses.data_address,
            "TRAINER": addresses.trainer_address,
            "EVAL": addresses.eval_address,
            "INFERENCE": addresses.inference_address,
        }
        for service in services:
            env[f"FT_{service}_DATA_DIR"] = str(self.data_root)
            # Each service's own settings name the others it calls.
            for other, address in services.items():
                if other != service:
                    env[f"FT_{service}_{other}_ADDRESS"] = address
        env.update(self.extra_env)
        return env

    def start(self, name: str, module: str) -> None:
        logs = self.data_root / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        log = open(logs / f"{name}.log", "ab")  # noqa: SIM115 - the child owns it for its lifetime
        # A new session per child: one killpg stops a service and anything it spawned (training children).
        self.processes[name] = subprocess.Popen(
            [sys.executable, "-m", module],
            env=self.environment(),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_grpc(self, name: str, address: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with grpc.insecure_channel(address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while time.monotonic() < deadline:
                self._check_alive(name)
                try:
                    reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=2)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    pass
                time.sleep(0.5)
        raise TimeoutError(f"{name} did not become healthy at {address} in {timeout:.0f}s")

    def wait_http(self, name: str, url: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._check_alive(name)
            try:
                if httpx.get(url, timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"{name} did not answer {url} in {timeout:.0f}s")

    def _check_alive(self, name: str) -> None:
        process = self.processes[name]
        if process.poll() is not None:
            log = self.data_root / "logs" / f"{name}.log"
            tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
            raise RuntimeError(f"{name} exited with status {process.returncode}; log tail:\n{tail}")

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        for process in self.processes.values():
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        self.processes.clear()


@contextmanager
def running_stack(data_root: Path, ports: StackPorts | None = None, **extra_env: str) -> Iterator[LocalStack]:
    """Starts every service, waits until each is healthy, and stops them all on exit or Ctrl-C."""
    ports = ports or StackPorts()
    stack = LocalStack(data_root=data_root, ports=ports, extra_env=extra_env)
    previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        stack.start("trainer", "services.trainer.server")
        stack.start("trainer-worker", "services.trainer.worker")
        stack.start("data", "services.data.server")
        stack.start("inference", "services.inference.server")
        stack.start("eval", "services.eval.server")
        addresses = ports.addresses()
        stack.wait_grpc("trainer", addresses.trainer_address, 60)
        stack.wait_grpc("data", addresses.data_address, 60)
        stack.wait_grpc("eval", addresses.eval_address, 60)
        stack.wait_http("inference", f"{addresses.gateway_url}/healthz", 300)
        yield stack
    finally:
        stack.stop()
        signal.signal(signal.SIGTERM, previous)

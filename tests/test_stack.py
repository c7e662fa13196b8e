"""`ftctl stack`: up on free, non-default ports in a temporary data directory, status, logs, down; down
after the process that started the stack was killed; a taken port; down with no stack."""

import fcntl
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
import httpx
import pytest

from finetune.v1 import trainer_pb2, trainer_pb2_grpc
from ftctl.local_stack import SERVICE_MODULES, StackError, StackPorts, free_port, refuse_running_stack
from ftctl.stack import LOCK_NAME
from ftctl.stack_record import RecordedProcess, StackRecord, group_alive, record_path, start_ticks
from services.trainer.config import DEFAULT_BASE_MODEL_NAME

PORT_VARIABLES = {
    "data": "FT_DATA_PORT",
    "trainer": "FT_TRAINER_PORT",
    "eval": "FT_EVAL_PORT",
    "inference": "FT_INFERENCE_PORT",
    "gateway": "FT_INFERENCE_HTTP_PORT",
    "console": "FT_CONSOLE_PORT",
}


def free_layout() -> StackPorts:
    """Distinct free ports, none of them a default: the stack must not assume its defaults."""
    ports: list[int] = []
    while len(ports) < len(PORT_VARIABLES):
        port = free_port()
        if port not in ports and port not in StackPorts().as_dict().values():
            ports.append(port)
    return StackPorts(*ports)


def stack_env(ports: StackPorts, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FT_")}
    # The transformers engine loads the default model in seconds.
    env.update({"FT_INFERENCE_ENGINE": "transformers", "HF_HUB_OFFLINE": "1", **extra})
    env.update({variable: str(getattr(ports, name)) for name, variable in PORT_VARIABLES.items()})
    return env


def ftctl(
    *args: str, env: dict[str, str], timeout: float = 300, cwd: Path | None = None
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ftctl.main", "stack", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def assert_all_stopped(record: StackRecord, ports: StackPorts) -> None:
    for process in record.processes:
        # Zombies count as stopped: their reaper (this machine's init) may come late.
        assert not group_alive(process), f"{process.name} ({process.pid}) still runs"
    for port in ports.as_dict().values():
        assert not listening(port), f"something still listens on {port}"


def test_down_without_a_stack_says_so_and_succeeds(tmp_path):
    result = ftctl("down", "--data-dir", str(tmp_path / "var"), env=stack_env(free_layout()))
    assert result.returncode == 0, result.stderr
    assert "no stack is recorded" in result.stderr and "nothing to stop" in result.stderr


def test_up_refuses_a_taken_port_naming_it_and_starts_nothing(tmp_path):
    ports = free_layout()
    data_dir = tmp_path / "var"
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", ports.eval))
        squatter.listen()
        result = ftctl("up", "--data-dir", str(data_dir), env=stack_env(ports), timeout=60)
    assert result.returncode == 1
    assert f"port {ports.eval} for the eval service is already in use" in result.stderr
    assert "FT_EVAL_PORT" in result.stderr
    assert result.stdout == ""
    assert not record_path(data_dir).exists() and not (data_dir / "logs").exists()
    for port in (ports.data, ports.trainer, ports.inference, ports.gateway):
        assert not listening(port), f"something listens on {port}"


def test_a_second_up_while_one_is_starting_is_refused(tmp_path):
    data_dir = tmp_path / "var"
    data_dir.mkdir()
    with open(data_dir / LOCK_NAME, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # as a `stack up` that is starting holds it
        result = ftctl("up", "--data-dir", str(data_dir), env=stack_env(free_layout()), timeout=60)
    assert result.returncode == 1
    assert "another `ftctl stack up` is starting the stack in" in result.stderr
    assert not record_path(data_dir).exists()


@pytest.mark.slow
def test_up_status_logs_down_on_a_custom_layout(tmp_path):
    ports = free_layout()
    data_dir = tmp_path / "var"
    eval_dir = tmp_path / "eval-data"
    env = stack_env(ports, FT_EVAL_DATA_DIR=str(eval_dir))
    # From a directory outside the repository: nothing may depend on where `stack up` runs.
    up = ftctl("up", "--data-dir", str(data_dir), env=env, cwd=tmp_path)
    record = StackRecord.load(record_path(data_dir))
    try:
        assert up.returncode == 0, up.stderr
        address_lines = [f"export {name}={value}" for name, value in ports.exports().items()]
        *exported_addresses, token_line, console_token_line = up.stdout.splitlines()
        assert exported_addresses == address_lines
        assert token_line.startswith("export FT_ADMIN_TOKEN=")
        assert console_token_line.startswith("export FT_CONSOLE_TOKEN=ftc_")
        console_url = f"http://127.0.0.1:{ports.console}"
        assert f"console (web)          {console_url}" in up.stderr
        assert httpx.get(f"{console_url}/login", timeout=10).status_code == 200
        # The console was given the gateway's credentials: its API keys page lists its own chat key.
        with httpx.Client(base_url=console_url, timeout=10, follow_redirects=True) as browser:
            login_csrf = re.search(r'name="csrf_token" value="([^"]+)"', browser.get("/login").text)
            signed_in = browser.post(
                "/login",
                data={"token": console_token_line.split("=", 1)[1], "csrf_token": login_csrf.group(1)},  # type: ignore[union-attr]
            )
            assert signed_in.status_code == 200, signed_in.text
            keys_page = browser.get("/keys").text
            assert "console playground" in keys_page and "FT_CONSOLE_GATEWAY_ADMIN_TOKEN" not in keys_page
        admin_env = {**env, **ports.exports(), "FT_ADMIN_TOKEN": token_line.split("=", 1)[1]}
        keys = subprocess.run(
            [sys.executable, "-m", "ftctl.main", "keys", "list"],
            env=admin_env,
            capture_output=True,
            text=True,
        )
        assert keys.returncode == 0, keys.stderr
        assert record is not None and record.supervisor is None
        assert [p.name for p in record.processes] == [
            "trainer",
            "trainer-worker",
            "data",
            "eval",
            "inference",
            "console",
        ]
        assert (eval_dir / "eval.db").exists() and not (data_dir / "eval.db").exists()
        assert (data_dir / "trainer.db").exists() and (data_dir / "inference.db").exists()
        with grpc.insecure_channel(ports.addresses().trainer_address) as channel:
            base = trainer_pb2_grpc.TrainerServiceStub(channel).GetModel(
                trainer_pb2.GetModelRequest(name=DEFAULT_BASE_MODEL_NAME), timeout=10
            )
        assert base.name == DEFAULT_BASE_MODEL_NAME

        status = ftctl("status", "--data-dir", str(data_dir), "--json", env=env)
        assert status.returncode == 0, status.stdout + status.stderr
        health = {row["service"]: row["health"] for row in json.loads(status.stdout)}
        assert health == {
            "trainer": "serving",
            "trainer-worker": "running",
            "data": "serving",
            "eval": "serving",
            "inference": "ready",
            "console": "serving",
        }

        logs = ftctl("logs", "inference", "-n", "2", "--data-dir", str(data_dir), env=env)
        assert logs.returncode == 0 and len(logs.stdout.splitlines()) == 2
        assert all(json.loads(line)["ts"] for line in logs.stdout.splitlines())
        unknown = ftctl("logs", "gateway", "--data-dir", str(data_dir), env=env)
        assert unknown.returncode == 1 and "choose one of trainer, trainer-worker" in unknown.stderr

        again = ftctl("up", "--data-dir", str(data_dir), env=env)
        assert again.returncode == 0 and "already running" in again.stderr
        assert again.stdout.splitlines() == address_lines, "a running stack's admin token is not kept"
    finally:
        down = ftctl("down", "--data-dir", str(data_dir), env=env)
    assert down.returncode == 0, down.stderr
    assert "stopped trainer, trainer-worker, data, eval, inference, console" in down.stderr
    assert_all_stopped(record, ports)
    assert not record_path(data_dir).exists()
    after = ftctl("status", "--data-dir", str(data_dir), env=env)
    assert after.returncode == 1 and "no stack is recorded" in after.stderr


@pytest.mark.slow
def test_down_stops_everything_after_the_supervisor_was_killed(tmp_path):
    ports = free_layout()
    data_dir = tmp_path / "var"
    env = stack_env(ports)
    supervisor = subprocess.Popen(
        [sys.executable, "-m", "ftctl.main", "stack", "up", "--data-dir", str(data_dir)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 300
    record = None
    while time.monotonic() < deadline and supervisor.poll() is None:
        record = StackRecord.load(record_path(data_dir)) if record_path(data_dir).exists() else None
        if record is not None and len(record.processes) == len(SERVICE_MODULES):
            break
        time.sleep(0.2)
    supervisor.send_signal(signal.SIGKILL)
    supervisor.wait()
    assert record is not None and len(record.processes) == len(SERVICE_MODULES), "not all processes started"
    assert record.running(), "nothing was left running to stop"

    down = ftctl("down", "--data-dir", str(data_dir), env=env)
    assert down.returncode == 0, down.stderr
    assert_all_stopped(record, ports)
    assert not record_path(data_dir).exists()


def test_down_leaves_a_process_that_reused_a_recorded_pid_alone(tmp_path):
    """A record whose pids now belong to other processes (after a reboot, say) stops nothing."""
    bystander = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True
    )
    try:
        data_dir = tmp_path / "var"
        data_dir.mkdir()
        record = {
            "data_root": str(data_dir),
            "ports": StackPorts().as_dict(),
            "data_dirs": {},
            "exports": {},
            "processes": [{"name": "trainer", "pid": bystander.pid, "start_ticks": 1, "log": ""}],
        }
        record_path(data_dir).write_text(json.dumps(record))
        down = ftctl("down", "--data-dir", str(data_dir), env=stack_env(free_layout()))
        assert down.returncode == 0, down.stderr
        assert "was not running" in down.stderr
        assert bystander.poll() is None, "down signalled a process it did not start"
    finally:
        bystander.kill()
        bystander.wait()


def test_the_demo_moves_off_taken_ports_and_leaves_a_running_stack_alone(tmp_path):
    ports = free_layout()
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", ports.trainer))
        squatter.listen()
        moved, notes = ports.with_free_ports()
    assert moved.trainer != ports.trainer and len(set(moved.as_dict().values())) == len(PORT_VARIABLES)
    assert {k: v for k, v in moved.as_dict().items() if k != "trainer"} == {
        k: v for k, v in ports.as_dict().items() if k != "trainer"
    }
    assert notes == [f"port {ports.trainer} (trainer) is taken: using {moved.trainer}"]

    running = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    try:
        record = StackRecord(data_root=str(tmp_path), ports=ports.as_dict(), data_dirs={}, exports={})
        ticks = start_ticks(running.pid)
        assert ticks is not None
        record.processes.append(RecordedProcess(name="trainer", pid=running.pid, start_ticks=ticks, log=""))
        record.save(record_path(tmp_path))
        with pytest.raises(StackError, match="is running: stop it with `ftctl stack down --data-dir"):
            refuse_running_stack(tmp_path)
    finally:
        running.kill()
        running.wait()
    refuse_running_stack(tmp_path)  # a record whose processes ended does not stand in the way

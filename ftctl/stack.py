"""`ftctl stack up | down | status | logs`: the whole platform on this machine, in the background.

`up` starts the four services and a trainer worker, each detached in its own process group, on the ports
of FT_DATA_PORT, FT_TRAINER_PORT, FT_EVAL_PORT, FT_INFERENCE_PORT and FT_INFERENCE_HTTP_PORT (defaults
50051-50054 and 8000), with their data under --data-dir (FT_<SERVICE>_DATA_DIR moves one service's data),
registers the default base model when that directory has none, waits until every service is healthy and
prints the `export` lines a shell needs. <data dir>/stack.json records what it started; `down` stops
exactly those process groups, also when `up` itself was killed. `down` without a stack says so and exits 0,
so it is safe to run twice (and from `make down`).
"""

import fcntl
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import typer

from ftctl.base_model import BaseModelMissing
from ftctl.common import JSON_OPTION
from ftctl.local_stack import (
    LOOPBACK,
    SERVICE_MODULES,
    STOP_GRACE_SECONDS,
    LocalStack,
    StackError,
    StackPorts,
    start_services,
    stopping_on_signals,
)
from ftctl.stack_record import StackRecord, record_path, stop_groups, stop_supervisor

app = typer.Typer(no_args_is_help=True)
LOCK_NAME = "stack.lock"

DATA_DIR_OPTION = typer.Option(
    Path("var"),
    "--data-dir",
    envvar="FT_STACK_DATA_DIR",
    help="Where the services keep their data, logs and the stack record (FT_STACK_DATA_DIR).",
)


def say(message: str) -> None:
    """Progress for people goes to stderr, so `eval "$(ftctl stack up)"` sees only the exports."""
    sys.stderr.write(message + "\n")


def fail(message: str) -> None:
    say(f"error: {message}")
    raise typer.Exit(1)


def export_lines(exports: dict[str, str]) -> str:
    return "".join(f"export {name}={value}\n" for name, value in exports.items())


def load_record(data_dir: Path) -> StackRecord | None:
    try:
        return StackRecord.load(record_path(data_dir.resolve()))
    except (ValueError, TypeError, KeyError) as err:
        fail(f"{record_path(data_dir.resolve())} is not a stack record ({err}); delete it if no stack runs")
    return None


@contextmanager
def one_start_at_a_time(data_dir: Path) -> Iterator[None]:
    """Two `stack up` in one directory at once would both pass the port check (and gRPC servers share a
    port silently), so the second is refused."""
    data_dir.mkdir(parents=True, exist_ok=True)
    with open(data_dir / LOCK_NAME, "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fail(f"another `ftctl stack up` is starting the stack in {data_dir.resolve()}")
        yield


@app.command()
def up(
    data_dir: Path = DATA_DIR_OPTION,
    timeout: float = typer.Option(600.0, min=1, help="Seconds to wait for every service to be healthy."),
) -> None:
    """Start the platform in the background and print the `export` lines for this shell."""
    with one_start_at_a_time(data_dir):
        start_or_reuse(data_dir, timeout)


def start_or_reuse(data_dir: Path, timeout: float) -> None:
    record = load_record(data_dir)
    if record is not None:
        running = record.running()
        if running and len(running) == len(record.processes) and record.supervisor is None:
            say(
                f"a stack is already running from {record.data_root}; "
                "the `stack up` that started it printed its FT_ADMIN_TOKEN"
            )
            sys.stdout.write(export_lines(record.exports))
            return
        if running:
            fail(
                f"a partly running stack is recorded in {record_path(Path(record.data_root))} "
                f"({', '.join(p.name for p in running)} alive): run `ftctl stack down --data-dir {data_dir}`"
            )
        record_path(Path(record.data_root)).unlink()  # every process of that record has exited
    try:
        ports = StackPorts.from_environment()
        ports.check_free()
    except StackError as err:
        fail(str(err))
    stack = LocalStack(data_root=data_dir, ports=ports)
    say(f"starting the platform from {stack.data_root} (logs in {stack.log_dir})")
    started = time.monotonic()
    try:
        with stopping_on_signals():
            try:
                start_services(stack, timeout, on_progress=say)
            except BaseException:
                say("stopping what was started")
                stack.stop()
                raise
            stack.detach()
    except (StackError, BaseModelMissing) as err:
        fail(str(err))
    except grpc.RpcError as err:
        fail(f"the trainer refused to register the default base model: {err.details()}")
    admin_token = first_admin_token(stack)
    if admin_token:
        give_the_console_gateway_credentials(stack, admin_token["FT_ADMIN_TOKEN"], timeout)
    exports = {**ports.exports(), **admin_token, **first_console_token(stack)}
    addresses = ports.addresses()
    say(f"all services healthy in {time.monotonic() - started:.0f}s")
    for name, where in (
        ("data", addresses.data_address),
        ("trainer", addresses.trainer_address),
        ("eval", addresses.eval_address),
        ("inference gRPC", addresses.inference_address),
        ("gateway (OpenAI API)", f"{addresses.gateway_url}/v1"),
        ("console (web)", stack.console_url),
    ):
        say(f"  {name:<22} {where}")
    say('stop with `ftctl stack down`; set these in your shell (or run: eval "$(ftctl stack up)"):')
    sys.stdout.write(export_lines(exports))


def first_admin_token(stack: LocalStack) -> dict[str, str]:
    """A fresh gateway gets its first admin token (for `ftctl keys`), printed once and never stored in
    clear; a gateway that has one keeps it."""
    from ftctl.keys import bootstrap_admin_token

    try:
        return {"FT_ADMIN_TOKEN": bootstrap_admin_token(stack.environment(), name="local stack")}
    except RuntimeError as err:
        say(
            f"no new admin token: {err} (FT_INFERENCE_DATA_DIR={stack.data_dirs['INFERENCE']} "
            f"{sys.executable} -m services.inference.keys bootstrap --replace)"
        )
        return {}


def give_the_console_gateway_credentials(stack: LocalStack, admin_token: str, timeout: float) -> None:
    """A new stack's console gets a chat key for its playground and the admin token for its API keys page,
    then restarts with them (they exist only once the gateway runs). Without them those pages say what
    to set, so a failure here is reported and the stack stays up."""
    import httpx

    gateway = stack.ports.addresses().gateway_url
    try:
        reply = httpx.post(
            f"{gateway}/admin/keys",
            json={"name": "console playground", "scopes": ["chat"]},
            headers={"Authorization": f"Bearer {admin_token}"},
            timeout=30,
        )
        reply.raise_for_status()
        credentials = {
            "FT_CONSOLE_GATEWAY_API_KEY": reply.json()["secret"],
            "FT_CONSOLE_GATEWAY_ADMIN_TOKEN": admin_token,
        }
        stack.restart("console", credentials, time.monotonic() + timeout)
    except (httpx.HTTPError, KeyError, StackError) as err:
        say(
            f"the console has no gateway credentials ({err}): its playground and API keys pages say what to set"
        )


def first_console_token(stack: LocalStack) -> dict[str, str]:
    """A fresh console gets its first admin operator token, printed once and stored hashed; a console
    that has an admin keeps it (`python -m services.console.accounts create` adds operators)."""
    bootstrap = subprocess.run(
        [sys.executable, "-m", "services.console.accounts", "bootstrap", "--name", "local stack"],
        env=stack.environment(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    name, _, token = bootstrap.stdout.strip().partition("=")
    if bootstrap.returncode != 0 or name != "FT_CONSOLE_TOKEN":
        say(f"no new console token: {bootstrap.stderr.strip().removeprefix('error: ')}")
        return {}
    return {"FT_CONSOLE_TOKEN": token}


@app.command()
def down(data_dir: Path = DATA_DIR_OPTION) -> None:
    """Stop exactly the processes `ftctl stack up` started from this data directory."""
    record = load_record(data_dir)
    if record is None:
        say(f"no stack is recorded in {record_path(data_dir.resolve())}: nothing to stop")
        return
    stop_supervisor(record.supervisor, STOP_GRACE_SECONDS)
    # The supervisor may have rewritten or removed the record while it stopped its services.
    record = load_record(data_dir) or record
    running = record.running()
    killed = stop_groups(record.processes, STOP_GRACE_SECONDS)
    record_path(Path(record.data_root)).unlink(missing_ok=True)
    if not running:
        say(f"the stack recorded in {record.data_root} was not running; record removed")
        return
    say(f"stopped {', '.join(p.name for p in running)}")
    if killed:
        say(f"{', '.join(killed)} did not stop within {STOP_GRACE_SECONDS:.0f}s and were killed")


def service_health(record: StackRecord) -> list[dict[str, str]]:
    """One row per recorded process: is it alive, and does its health check pass?"""
    import httpx
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    ports = StackPorts(**record.ports)
    addresses = ports.addresses()
    grpc_address = {
        "trainer": addresses.trainer_address,
        "data": addresses.data_address,
        "eval": addresses.eval_address,
        "inference": addresses.inference_address,
    }
    running = {p.name for p in record.running()}
    rows = []
    for process in record.processes:
        where = grpc_address.get(process.name, "")
        if process.name not in running:
            health = "exited"
        elif process.name == "inference":
            try:
                reply = httpx.get(f"{addresses.gateway_url}/readyz", timeout=3)
                health = str(reply.json().get("status", reply.status_code))
            except (httpx.HTTPError, ValueError) as err:
                health = f"unreachable ({type(err).__name__})"
            where = f"{where}, {addresses.gateway_url}"
        elif process.name == "console":
            where = f"http://{LOOPBACK}:{ports.console}"
            try:
                health = (
                    "serving" if httpx.get(f"{where}/healthz", timeout=3).status_code == 200 else "failing"
                )
            except httpx.HTTPError as err:
                health = f"unreachable ({type(err).__name__})"
        elif where:
            with grpc.insecure_channel(where) as channel:
                try:
                    status = health_pb2_grpc.HealthStub(channel).Check(
                        health_pb2.HealthCheckRequest(), timeout=3
                    )
                    health = health_pb2.HealthCheckResponse.ServingStatus.Name(status.status).lower()
                except grpc.RpcError as err:
                    health = f"unreachable ({err.code().name})"
        else:
            health = "running"  # the worker has no port; it is healthy while it runs
        rows.append({"service": process.name, "pid": str(process.pid), "address": where, "health": health})
    return rows


HEALTHY = {"serving", "ready", "running"}


@app.command()
def status(
    data_dir: Path = DATA_DIR_OPTION,
    json_output: bool = JSON_OPTION,
) -> None:
    """Each service's health. Exit status 0 only when every service is healthy."""
    record = load_record(data_dir)
    if record is None:
        fail(f"no stack is recorded in {record_path(data_dir.resolve())}: start one with `ftctl stack up`")
    rows = service_health(record)
    if json_output:
        sys.stdout.write(json.dumps(rows, indent=2) + "\n")
    else:
        sys.stdout.write(f"stack in {record.data_root}\n")
        for row in rows:
            sys.stdout.write(
                f"{row['service']:<16} {row['health']:<22} pid {row['pid']:<8} {row['address']}\n"
            )
    if any(row["health"] not in HEALTHY for row in rows):
        raise typer.Exit(1)


@app.command()
def logs(
    service: str = typer.Argument(..., help=f"One of: {', '.join(SERVICE_MODULES)}."),
    data_dir: Path = DATA_DIR_OPTION,
    lines: int = typer.Option(50, "--lines", "-n", min=0, help="How many of the last lines to print."),
    follow: bool = typer.Option(False, "--follow", "-f", help="Keep printing new lines until Ctrl-C."),
) -> None:
    """Print the end of a service's log (-f follows it)."""
    if service not in SERVICE_MODULES:
        fail(f"unknown service '{service}': choose one of {', '.join(SERVICE_MODULES)}")
    log = data_dir.resolve() / "logs" / f"{service}.log"
    if not log.exists():
        fail(f"no log at {log}: has `ftctl stack up --data-dir {data_dir}` run?")
    with open(log, "rb") as handle:
        tail = handle.read().splitlines(keepends=True)[-lines:] if lines else []
        sys.stdout.write(b"".join(tail).decode(errors="replace"))
        sys.stdout.flush()
        try:
            while follow:
                chunk = handle.read()
                if chunk:
                    sys.stdout.write(chunk.decode(errors="replace"))
                    sys.stdout.flush()
                else:
                    time.sleep(0.5)
        except KeyboardInterrupt:
            pass

"""What every ftctl command shares: service stubs, JSON or table output, live job progress, RPC errors."""

import json
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import grpc
import typer
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from finetune.v1 import common_pb2
from ftcommon.grpc_client import open_channel
from ftcommon.settings import ServiceAddresses

console = Console(stderr=True)
stdout = Console()

JSON_OPTION = typer.Option(False, "--json", help="Print machine-readable JSON instead of a table.")


def addresses() -> ServiceAddresses:
    return ServiceAddresses()


def stub(stub_class: Callable[[grpc.Channel], Any], address: str) -> Any:
    return stub_class(open_channel(address, addresses().rpc_timeout_seconds))


def to_dict(message: Message) -> dict[str, Any]:
    return MessageToDict(message, preserving_proto_field_name=True)


def print_json(value: Any) -> None:
    if isinstance(value, Message):
        value = to_dict(value)
    elif isinstance(value, list) and value and isinstance(value[0], Message):
        value = [to_dict(v) for v in value]
    sys.stdout.write(json.dumps(value, indent=2, default=str) + "\n")


def print_table(title: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    table = Table(title=title)
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*[str(v) for v in row])
    stdout.print(table)


@contextmanager
def rpc_errors() -> Iterator[None]:
    """Turns a failed call into one readable line and exit status 1."""
    try:
        yield
    except grpc.RpcError as err:
        code = err.code().name if err.code() else "UNKNOWN"
        console.print(f"[red]error[/red] {code}: {err.details()}")
        raise typer.Exit(1) from None


STATE_NAMES = {v: k.removeprefix("JOB_STATE_").lower() for k, v in common_pb2.JobState.items()}


def follow_job(events: Iterable[common_pb2.JobEvent], description: str, show_json: bool = False) -> int:
    """Shows a job's event stream as a live progress bar; returns the final JobState value."""
    final_state = common_pb2.JOB_STATE_UNSPECIFIED
    if show_json:
        for event in events:
            print_json(event)
            if event.kind == common_pb2.EVENT_KIND_STATE:
                final_state = event.state
        return final_state
    if not console.is_terminal:
        return _log_job(events, description)
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.percentage:>5.1f}%"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[detail]}"),
    )
    with Progress(*columns, console=console) as progress:
        task = progress.add_task(description, total=1.0, detail="")
        for event in events:
            detail = event.message
            if event.metrics:
                detail = "  ".join(f"{k}={_short(v)}" for k, v in event.metrics.items())
            if event.kind == common_pb2.EVENT_KIND_STATE:
                final_state = event.state
                detail = STATE_NAMES.get(event.state, "") + (f": {event.message}" if event.message else "")
            progress.update(task, completed=event.progress, detail=detail[:100])
    return final_state


def _log_job(events: Iterable[common_pb2.JobEvent], description: str) -> int:
    """Progress as plain lines for logs and CI, where a live bar would not render: every state change,
    and a line each time progress passes another tenth."""
    final_state = common_pb2.JOB_STATE_UNSPECIFIED
    reported_tenth = -1
    for event in events:
        detail = "  ".join(f"{k}={_short(v)}" for k, v in event.metrics.items())
        if event.kind == common_pb2.EVENT_KIND_STATE:
            final_state = event.state
            console.print(f"{description}: {STATE_NAMES.get(event.state, '')} {event.message}".rstrip())
        elif int(event.progress * 10) > reported_tenth:
            reported_tenth = int(event.progress * 10)
            console.print(f"{description}: {event.progress:6.1%} {detail or event.message}")
    return final_state


def _short(value: float) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)

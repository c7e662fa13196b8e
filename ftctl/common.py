"""What every ftctl command shares: service stubs, JSON or table output, live job progress, RPC errors.

Strings that come from a server or a file are printed as rich `Text` or escaped, never read as markup.
"""

import json
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import grpc
import typer
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text
from typer.core import TyperOption

from finetune.v1 import common_pb2
from ftcommon.errors import InvalidArgument
from ftcommon.grpc_client import open_channel
from ftcommon.settings import ServiceAddresses

# Piped output is not cut at 80 columns: a table as wide as its content, unless COLUMNS says otherwise.
PIPED_WIDTH = 10_000
console = Console(stderr=True)
stdout = Console(width=None if sys.stdout.isatty() or "COLUMNS" in os.environ else PIPED_WIDTH)


def _flags_take_no_type(option: TyperOption, ctx: Any) -> str | None:
    """typer 0.29's help shows a `<bool>` type beside every flag (`--json`, `--help`), as if it took a value;
    a flag takes none, so its type column stays empty. Installed once, for every ftctl command."""
    return None if option.is_flag else _typer_display_type_rich(option, ctx)


_typer_display_type_rich = TyperOption.display_type_rich
TyperOption.display_type_rich = _flags_take_no_type  # type: ignore[method-assign]

JSON_OPTION = typer.Option(False, "--json", help="Print machine-readable JSON instead of a table.")


def addresses() -> ServiceAddresses:
    return ServiceAddresses()


@dataclass(frozen=True)
class Endpoint:
    """A service as the CLI reaches it, for error messages."""

    service: str
    address: str
    variable: str  # the environment variable that sets the address


_endpoint_called: ContextVar[Endpoint | None] = ContextVar("endpoint_called", default=None)


class ServiceClient:
    """A generated stub that records which service each call goes to, so a failure can name it."""

    def __init__(self, generated_stub: Any, endpoint: Endpoint) -> None:
        self._stub = generated_stub
        self.endpoint = endpoint

    def __getattr__(self, method_name: str) -> Callable[..., Any]:
        method = getattr(self._stub, method_name)

        def call(*args: Any, **kwargs: Any) -> Any:
            _endpoint_called.set(self.endpoint)
            return method(*args, **kwargs)

        return call


# Services served inside another's process, at its address (so its variable sets it).
SERVED_BY = {"registry": "trainer"}


def stub(stub_class: Callable[[grpc.Channel], Any], address: str) -> Any:
    service = stub_class.__name__.removesuffix("ServiceStub").lower()
    endpoint = Endpoint(service, address, f"FT_{SERVED_BY.get(service, service).upper()}_ADDRESS")
    return ServiceClient(stub_class(open_channel(address, addresses().rpc_timeout_seconds)), endpoint)


def gateway_unreachable(url: str) -> str:
    return (
        f"cannot reach the gateway at {escape(url)} (FT_GATEWAY_URL sets the address; "
        "`ftctl stack up` starts the services)"
    )


def to_dict(message: Message) -> dict[str, Any]:
    return MessageToDict(message, preserving_proto_field_name=True)


def print_json(value: Any) -> None:
    if isinstance(value, Message):
        value = to_dict(value)
    elif isinstance(value, list) and value and isinstance(value[0], Message):
        value = [to_dict(v) for v in value]
    sys.stdout.write(json.dumps(value, indent=2, default=str) + "\n")


def print_table(title: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """Every title, header and cell is plain text: names and values come from servers and files."""
    table = Table(title=Text(title))
    for column in columns:
        table.add_column(Text(column))
    for row in rows:
        table.add_row(*[Text(str(v)) for v in row])
    stdout.print(table)


@contextmanager
def rpc_errors() -> Iterator[None]:
    """Turns a failed call into one readable line and exit status 1."""
    try:
        yield
    except grpc.RpcError as err:
        code = err.code().name if err.code() else "UNKNOWN"
        endpoint = _endpoint_called.get()
        # Every service sends initial metadata (the request id) first: without it, the call never got there.
        unreached = err.code() == grpc.StatusCode.UNAVAILABLE and not err.initial_metadata()
        if unreached and endpoint is not None:
            console.print(
                f"[red]error[/red] {code}: cannot reach the {endpoint.service} service at "
                f"{escape(endpoint.address)} ({endpoint.variable} sets the address; `ftctl stack up` starts the "
                f"services): {escape(err.details() or '')}"
            )
        else:
            console.print(f"[red]error[/red] {code}: {escape(err.details() or '')}")
        raise typer.Exit(1) from None


@contextmanager
def spec_errors(source: str) -> Iterator[None]:
    """A request its spec refuses (ftcommon/specs): one line naming the field and where it came from."""
    try:
        yield
    except InvalidArgument as err:
        raise typer.BadParameter(f"{err.field}: {err.message}", param_hint=source) from None


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
        TextColumn("{task.fields[detail]}", markup=False),  # server text
    )
    with Progress(*columns, console=console) as progress:
        task = progress.add_task(escape(description), total=1.0, detail="")  # names a user typed
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
            console.print(Text(f"{description}: {STATE_NAMES.get(event.state, '')} {event.message}".rstrip()))
        elif int(event.progress * 10) > reported_tenth:
            reported_tenth = int(event.progress * 10)
            console.print(Text(f"{description}: {event.progress:6.1%} {detail or event.message}"))
    return final_state


def _short(value: float) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)

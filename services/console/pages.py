"""Template rendering: one Jinja environment, one layout, the session and its CSRF token in every page."""

from datetime import datetime
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.templating import Jinja2Templates
from google.protobuf.timestamp_pb2 import Timestamp
from starlette.responses import Response

from finetune.v1 import common_pb2, registry_pb2
from services.console.charts import histogram, interval

templates = Jinja2Templates(directory=Path(__file__).parent / "templates")


def when(stamp: Timestamp) -> str:
    if not stamp.seconds:
        return ""
    return datetime.fromtimestamp(stamp.seconds).strftime("%Y-%m-%d %H:%M")


def state_name(state: int) -> str:
    return common_pb2.JobState.Name(state).removeprefix("JOB_STATE_").lower()


def enum_name(value: int, enum: Any, prefix: str) -> str:
    return enum.Name(value).removeprefix(prefix).lower().replace("_", " ")


def size(num_bytes: int) -> str:
    amount = float(num_bytes)
    for unit in ("B", "KB", "MB", "GB"):
        if amount < 1024 or unit == "GB":
            return f"{amount:.0f} {unit}" if unit == "B" else f"{amount:.1f} {unit}"
        amount /= 1024
    return f"{amount:.1f} GB"


def alias_action(action: int) -> str:
    return enum_name(action, registry_pb2.AliasAction, "ALIAS_ACTION_") if action else ""


templates.env.filters.update(when=when, state_name=state_name, size=size, alias_action=alias_action)
templates.env.globals.update(histogram=histogram, interval=interval)


def render(request: Request, template: str, context: dict[str, Any], status_code: int = 200) -> Response:
    session = getattr(request.state, "session", None)
    return templates.TemplateResponse(
        request,
        template,
        {"session": session, "csrf_token": session.csrf_token if session else "", **context},
        status_code=status_code,
    )

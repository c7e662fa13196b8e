"""Registry pages: models with lineage, aliases with revision history, promote (gated on the server) and
rollback. A refused promotion shows the registry's reason and the request id on the same page."""

import re
from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import RedirectResponse, Response, StreamingResponse

from finetune.v1 import trainer_pb2
from services.console.pages import render
from services.console.peers import ConsoleError, call
from services.console.protocol import PromoteForm
from services.console.security import Admin, SignedIn
from services.console.serving_exports import ExportServing
from services.console.serving_model_page import ModelPageServing
from services.console.serving_models import ModelsServing
from services.console.state import Console

router = APIRouter(prefix="/models")


def serving(console: Console) -> ModelsServing:
    return ModelsServing(console.peers, console.settings.page_size)


def _registry_page(
    request: Request,
    console: Console,
    page_token: str,
    refusal: ConsoleError | None = None,
    status: int = 200,
    prefill: PromoteForm | None = None,
) -> Response:
    models = serving(console)
    rows, next_token = models.page(page_token)
    context = {
        "rows": rows,
        "next_page_token": next_token,
        "page_token": page_token,
        "histories": models.alias_histories(rows),
        "refusal": refusal,
        "prefill": prefill,
    }
    return render(request, "models.html", context, status_code=status)


@router.get("")
def list_models(
    request: Request,
    console: Console,
    _: SignedIn,
    page_token: str = "",
    promote: str = "",
    eval_run_id: str = "",
) -> Response:
    # An evaluation report links here with its passing candidate and run, so the promote form starts filled.
    prefill = PromoteForm(model=promote, eval_run_id=eval_run_id) if promote else None
    return _registry_page(request, console, page_token, prefill=prefill)


@router.post("/promote")
def promote(
    request: Request, console: Console, session: Admin, form: Annotated[PromoteForm, Form()]
) -> Response:
    try:
        serving(console).promote(form, session.operator.name)
    except ConsoleError as refused:
        # The gate's refusal belongs on the registry page, next to the form that asked.
        return _registry_page(request, console, "", refusal=refused, status=refused.status, prefill=form)
    return RedirectResponse("/models", status_code=303)


@router.post("/aliases/{alias}/rollback")
def rollback(
    console: Console,
    session: Admin,
    alias: str,
    revision: Annotated[int, Form()],
    reason: Annotated[str, Form()] = "",
) -> Response:
    serving(console).rollback(alias, revision, reason, session.operator.name)
    return RedirectResponse("/models", status_code=303)


@router.get("/{model_ref}")
def model_page(request: Request, console: Console, _: SignedIn, model_ref: str) -> Response:
    page = ModelPageServing(console.peers).page(model_ref)
    return render(request, "model.html", {"page": page, "m": page.model})


@router.get("/{model_ref}/export")
def export_model(console: Console, _: SignedIn, model_ref: str, format: str = "merged") -> StreamingResponse:
    model = call("registry", console.peers.registry.GetModel, trainer_pb2.GetModelRequest(name=model_ref))
    exports = ExportServing(console.peers, console.settings.watch_timeout_seconds * 12)
    stream, first = exports.first_chunk(model.id, format)
    folder = re.sub(r"[^A-Za-z0-9_.-]", "_", f"{model.name}-{format}")
    return StreamingResponse(
        exports.zipped(stream, first, folder),
        media_type="application/zip",
        headers={"Content-Disposition": f'attachment; filename="{folder}.zip"'},
    )

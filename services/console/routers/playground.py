"""The playground page and its chat relay (one model, or two side by side: the page sends both)."""

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from services.console.pages import render
from services.console.security import Admin, SignedIn
from services.console.serving_datasets import DatasetsServing
from services.console.serving_models import ModelsServing
from services.console.serving_playground import PlaygroundChat, PlaygroundServing
from services.console.serving_training_rows import TrainingRow, TrainingRowSaver
from services.console.state import Console

router = APIRouter()


@router.get("/playground")
def playground(request: Request, console: Console, _: SignedIn) -> Response:
    choices = ModelsServing(console.peers, 200).choices()
    datasets = DatasetsServing(console.peers, 200, console.settings.max_upload_bytes).page("").datasets
    return render(request, "playground.html", {"choices": choices, "datasets": datasets})


@router.post("/api/playground/chat")
def chat(console: Console, _: SignedIn, body: PlaygroundChat) -> StreamingResponse:
    settings = console.settings
    relay = PlaygroundServing(
        settings.gateway_url, settings.gateway_api_key.get_secret_value(), settings.rpc_timeout_seconds * 10
    )
    return StreamingResponse(
        relay.stream(body), media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
    )


@router.post("/api/playground/training-rows")
def save_training_row(console: Console, _: Admin, row: TrainingRow) -> JSONResponse:
    datasets = DatasetsServing(console.peers, console.settings.page_size, console.settings.max_upload_bytes)
    saved = TrainingRowSaver(datasets, console.peers).save(row)
    body = {
        "id": saved.id,
        "name": saved.name,
        "rows": saved.counts.rows_kept,
        "url": f"/datasets/{saved.id}",
    }
    return JSONResponse(body)

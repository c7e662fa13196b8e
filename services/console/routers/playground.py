"""The playground page and its chat relay (one model, or two side by side: the page sends both)."""

from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse

from services.console.pages import render
from services.console.security import SignedIn
from services.console.serving_models import ModelsServing
from services.console.serving_playground import PlaygroundChat, PlaygroundServing
from services.console.state import Console

router = APIRouter()


@router.get("/playground")
def playground(request: Request, console: Console, _: SignedIn) -> Response:
    choices = ModelsServing(console.peers, 200).choices()
    return render(request, "playground.html", {"choices": choices})


@router.post("/api/playground/chat")
def chat(console: Console, _: SignedIn, body: PlaygroundChat) -> StreamingResponse:
    settings = console.settings
    relay = PlaygroundServing(
        settings.gateway_url, settings.gateway_api_key.get_secret_value(), settings.rpc_timeout_seconds * 10
    )
    return StreamingResponse(
        relay.stream(body), media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
    )

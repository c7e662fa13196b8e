"""POST /v1/completions."""

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse

from services.inference.errors import events_with_errors
from services.inference.protocol import CompletionRequest, CompletionResponse
from services.inference.routers.security import require_key
from services.inference.state import Gateway

router = APIRouter(dependencies=[Depends(require_key)])


@router.post("/v1/completions", response_model=None)
async def create_completion(
    body: CompletionRequest, request: Request, state: Gateway
) -> CompletionResponse | StreamingResponse:
    result = await state.completion.create(body, request.state.request_id)
    if isinstance(result, CompletionResponse):
        return result
    return StreamingResponse(
        events_with_errors(result), media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
    )

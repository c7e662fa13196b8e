"""POST /v1/chat/completions."""

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse

from services.inference.errors import events_with_errors
from services.inference.protocol import ChatCompletionRequest, ChatCompletionResponse
from services.inference.routers.security import require_key
from services.inference.state import Gateway

router = APIRouter(dependencies=[Depends(require_key)])


@router.post("/v1/chat/completions", response_model=None)
async def create_chat_completion(
    body: ChatCompletionRequest, request: Request, state: Gateway
) -> ChatCompletionResponse | StreamingResponse:
    result = await state.chat.create(body, request.state.request_id)
    if isinstance(result, ChatCompletionResponse):
        return result
    return StreamingResponse(
        events_with_errors(result), media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
    )

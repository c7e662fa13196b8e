"""The playground's chat: the gateway's OpenAI-compatible /v1/chat/completions, streamed, relayed to the
page as the gateway sends it. The console holds the gateway key; the browser never sees it."""

import json
from collections.abc import AsyncIterator

import httpx
from pydantic import BaseModel, Field

from ftcommon.interceptors import REQUEST_ID_HEADER
from ftcommon.logs import request_id_var


class ChatMessage(BaseModel):
    role: str = Field(pattern="^(system|user|assistant)$")
    content: str


class PlaygroundChat(BaseModel):
    model: str = Field(min_length=1)
    messages: list[ChatMessage] = Field(min_length=1)
    temperature: float = Field(0.0, ge=0, le=2)
    max_tokens: int = Field(128, ge=1, le=4096)


class PlaygroundServing:
    def __init__(self, gateway_url: str, api_key: str, timeout: float) -> None:
        self.gateway_url = gateway_url.rstrip("/")
        self.api_key = api_key
        self.timeout = timeout

    async def stream(self, chat: PlaygroundChat) -> AsyncIterator[str]:
        """The gateway's server-sent events, line by line; a refusal or an unreachable gateway becomes one
        `error` event carrying the gateway's message and the request id."""
        request_id = request_id_var.get() or ""
        headers = {REQUEST_ID_HEADER: request_id}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        body = {**chat.model_dump(), "stream": True}
        try:
            async with httpx.AsyncClient(timeout=self.timeout) as client:
                async with client.stream(
                    "POST", f"{self.gateway_url}/v1/chat/completions", json=body, headers=headers
                ) as reply:
                    if reply.status_code != 200:
                        text = (await reply.aread()).decode(errors="replace")
                        yield _error_event(
                            f"the gateway answered {reply.status_code}: {_message(text)}", request_id
                        )
                        return
                    async for line in reply.aiter_lines():
                        if line:
                            yield line + "\n\n"
        except httpx.HTTPError as err:
            yield _error_event(
                f"the gateway at {self.gateway_url} is unreachable: {type(err).__name__}", request_id
            )


def _message(text: str) -> str:
    try:
        return str(json.loads(text)["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return text[:300]


def _error_event(message: str, request_id: str) -> str:
    return f"event: error\ndata: {json.dumps({'error': message, 'request_id': request_id})}\n\n"

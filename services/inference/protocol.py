"""Request and response bodies of the OpenAI-compatible API (the subset apps use), as pydantic models."""

import time
import uuid
from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

Role = Literal["system", "user", "assistant"]


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    role: Role
    content: str | list[TextPart]

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class StreamOptions(BaseModel):
    include_usage: bool = False


class SamplingFields(BaseModel):
    """Fields chat and completion requests share. Unknown OpenAI fields are accepted and ignored."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] = 1.0
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] = 1.0
    n: Annotated[int, Field(ge=1, le=8)] = 1
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None

    @field_validator("stop")
    @classmethod
    def _at_most_four_stops(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list) and (len(value) > 4 or any(not s for s in value)):
            raise ValueError("up to 4 non-empty stop sequences")
        return value

    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class ChatCompletionRequest(SamplingFields):
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    # The newer name of max_tokens; either is accepted.
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None
    # vLLM's extension: the response carries the prompt's token ids, to check templating end to end.
    return_token_ids: bool = False

    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class CompletionRequest(SamplingFields):
    prompt: str | Annotated[list[str], Field(min_length=1, max_length=1)]
    echo: bool = False

    def prompt_text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


def new_completion_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def now() -> int:
    return int(time.time())


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    finish_reason: str | None
    logprobs: None = None


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    prompt_token_ids: list[int] | None = None


class DeltaMessage(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChatChunkChoice(BaseModel):
    index: int
    delta: DeltaMessage
    finish_reason: str | None = None
    logprobs: None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None


class CompletionChoice(BaseModel):
    index: int
    text: str
    finish_reason: str | None = None
    logprobs: None = None


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "finetune-platform"
    root: str  # the registry model id behind the name
    max_model_len: int | None = None  # known once the model is loaded
    dtype: str | None = None  # what the engine computes in ("float32" | "bfloat16"), once loaded


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ApiKeyCreateRequest(BaseModel):
    """POST /admin/keys (admin token required)."""

    model_config = ConfigDict(extra="forbid")

    name: Annotated[str, Field(min_length=1, max_length=200)] = "default"
    rate_limit_per_minute: Annotated[int, Field(ge=1)] | None = None  # empty: the gateway's default
    scopes: list[Literal["chat", "fine-tune", "admin"]] = Field(
        default_factory=lambda: ["chat"], min_length=1
    )
    # Keys of one project see the same files and fine-tuning jobs; empty: the key's name.
    project: Annotated[str, Field(max_length=200)] = ""


class ApiKeyInfo(BaseModel):
    """A key as listed: never its secret, only a prefix to recognise it by."""

    id: str
    name: str
    prefix: str
    rate_limit_per_minute: int | None
    created_at: datetime
    revoked_at: datetime | None
    scopes: list[str]
    project: str


class CreatedApiKey(ApiKeyInfo):
    secret: str  # shown in this response only: the gateway stores a hash


class ApiKeyList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ApiKeyInfo]


class ApiKeyUsage(BaseModel):
    """One key's requests as this gateway process counted them (its Prometheus counters): since it started."""

    key_id: str
    requests: int
    failed: int  # answered 4xx or 5xx
    prompt_tokens: int = 0  # prompts the engines processed for the key's requests
    completion_tokens: int = 0  # tokens generated for them
    last_used_at: datetime | None


class ApiKeyUsageList(BaseModel):
    object: Literal["list"] = "list"
    since: datetime  # when this gateway process started counting
    data: list[ApiKeyUsage]


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody


def sse(payload: BaseModel | str) -> str:
    """One server-sent event as the OpenAI stream writes it."""
    data = payload if isinstance(payload, str) else payload.model_dump_json(exclude_none=False)
    return f"data: {data}\n\n"

"""The engine interface, in the spirit of vLLM's EngineClient: prompts go in as token ids (the gateway
templates them with ftcommon.chat_format), text and token counts stream out."""

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

FinishReason = Literal["stop", "length", "abort"]


@dataclass(frozen=True)
class SamplingOptions:
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    stop: Sequence[str] = ()
    seed: int | None = None


@dataclass(frozen=True)
class GenerationChunk:
    """What one step produced for one request; `text` is new since the previous chunk."""

    text: str
    completion_tokens: int  # generated so far
    finish_reason: FinishReason | None = None


@dataclass(frozen=True)
class ScoreInput:
    prompt_ids: list[int]
    continuation_ids: list[int]


@dataclass(frozen=True)
class EngineModel:
    """What an engine is asked to serve: a verified local folder and the registry's facts about it."""

    model_id: str
    name: str
    folder: Path
    max_context: int
    stop_token_ids: tuple[int, ...]  # the end-of-turn token (and the folder's other eos ids)


@dataclass
class EngineStats:
    max_batch_size: int = 0  # the largest number of requests decoded in one step so far
    running: int = 0
    waiting: int = 0
    extra: dict[str, float] = field(default_factory=dict)


class EngineClient(ABC):
    name: str  # "vllm" | "transformers"

    def __init__(self, model: EngineModel, dtype: str) -> None:
        self.model = model
        self.dtype = dtype  # "float32" | "bfloat16": what the weights are computed in

    @abstractmethod
    def generate(
        self, prompt_ids: list[int], sampling: SamplingOptions, request_id: str
    ) -> AsyncIterator[GenerationChunk]:
        """Streams chunks; the last one carries finish_reason. Closing the iterator early aborts."""

    @abstractmethod
    async def abort(self, request_id: str) -> None:
        """Frees the request's batch slot; its stream ends with finish_reason 'abort'."""

    @abstractmethod
    async def score(self, items: Sequence[ScoreInput]) -> list[float]:
        """Summed log-probability of each continuation given its prompt."""

    @abstractmethod
    async def check_health(self) -> None:
        """Raises when the engine cannot serve."""

    @abstractmethod
    def stats(self) -> EngineStats: ...

    @abstractmethod
    async def shutdown(self) -> None:
        """Frees the weights and workers; called once no request uses the engine any more."""

"""What chat, completions and the gRPC service share: prompt tokens from the stored template, limits checked
before any work, admission into a bounded queue, and one generation stream with its metrics."""

import asyncio
import re
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import aclosing
from dataclasses import dataclass

from ftcommon.chat_format import prompt_ids
from ftcommon.errors import InvalidArgument, ServiceError, Unavailable
from ftcommon.logs import request_id_var
from services.inference import metrics
from services.inference.config import InferenceSettings
from services.inference.engine.base import GenerationChunk, SamplingOptions, ScoreInput
from services.inference.errors import GenerationTimeout
from services.inference.model_manager import Lease, ModelManager, ServedModel

ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class SamplingRequest:
    max_tokens: int | None
    temperature: float
    top_p: float
    stop: Sequence[str]
    seed: int | None


class TopicPolicy:
    """Refuses a user turn that matches a blocked topic before the model sees it."""

    def __init__(self, patterns: Sequence[str], refusal: str) -> None:
        self.patterns = [re.compile(p, re.IGNORECASE) for p in patterns]
        self.refusal = refusal

    def refusal_for(self, messages: Sequence[dict[str, str]]) -> str | None:
        last_user = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
        if any(p.search(last_user) for p in self.patterns):
            return self.refusal
        return None


class Admission:
    """A bounded queue in front of the engines: beyond `limit` admitted requests, new ones are refused
    (503 with Retry-After) instead of piling up in memory."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.admitted = 0

    def enter(self) -> None:
        if self.admitted >= self.limit:
            metrics.REJECTED.labels("queue_full").inc()
            raise Unavailable(f"the server is at capacity ({self.limit} requests in flight); retry shortly")
        self.admitted += 1
        metrics.IN_FLIGHT.set(self.admitted)

    def leave(self) -> None:
        self.admitted -= 1
        metrics.IN_FLIGHT.set(self.admitted)


class Ticket:
    """An admitted request and the model lease it holds; end() is idempotent."""

    def __init__(self, lease: Lease, admission: Admission) -> None:
        self.lease = lease
        self.served = lease.served
        self._admission = admission
        self._ended = False

    def end(self) -> None:
        if not self._ended:
            self._ended = True
            self.lease.release()
            self._admission.leave()


class GenerationService:
    def __init__(self, settings: InferenceSettings, manager: ModelManager) -> None:
        self.settings = settings
        self.manager = manager
        self.admission = Admission(settings.max_queue)
        self.policy = TopicPolicy(settings.blocked_topics, settings.refusal_message)

    async def begin(self, model: str | None) -> "Ticket":
        """Admits a request and pins the engine that will answer it; the caller must end() the ticket."""
        self.admission.enter()
        try:
            return Ticket(await self.manager.lease(model), self.admission)
        except BaseException:
            self.admission.leave()
            raise

    @staticmethod
    def chat_prompt(served: ServedModel, messages: Sequence[dict[str, str]]) -> list[int]:
        """The training template's tokens for this conversation, the same call data prep makes."""
        if not messages:
            raise InvalidArgument("at least one message is required", field="messages")
        for index, message in enumerate(messages):
            if message["role"] not in ROLES:
                raise InvalidArgument(
                    f"role must be one of {', '.join(ROLES)}", field=f"messages.{index}.role"
                )
        return prompt_ids(served.tokenizer, messages, served.chat_template)

    @staticmethod
    def text_prompt(served: ServedModel, prompt: str) -> list[int]:
        if not prompt:
            raise InvalidArgument("must not be empty", field="prompt")
        return list(served.tokenizer(prompt, add_special_tokens=False)["input_ids"])

    def sampling(self, served: ServedModel, prompt_length: int, request: SamplingRequest) -> SamplingOptions:
        """Checks the request against the model's context before anything is queued."""
        room = served.max_context - prompt_length
        max_tokens = request.max_tokens
        if max_tokens is not None and max_tokens < 1:
            raise InvalidArgument("must be at least 1", field="max_tokens")
        requested = max_tokens if max_tokens is not None else 1
        if room < requested:
            raise InvalidArgument(
                f"This model's maximum context length is {served.max_context} tokens. However, you requested "
                f"{prompt_length + requested} tokens ({prompt_length} in the messages, {requested} in the "
                "completion). Please reduce the length of the messages or completion.",
                field="max_tokens" if max_tokens is not None else "messages",
            )
        if max_tokens is None:
            max_tokens = min(room, self.settings.default_max_tokens)
        return SamplingOptions(
            max_tokens=max_tokens,
            temperature=request.temperature,
            top_p=request.top_p,
            stop=tuple(request.stop),
            seed=request.seed,
        )

    async def stream(
        self, served: ServedModel, prompt: list[int], sampling: SamplingOptions, request_id: str
    ) -> AsyncIterator[GenerationChunk]:
        """One generation of an admitted request, within the server's deadline; records TTFT and token
        counts. A failure the engine is to blame for ends as 503 while the supervisor rebuilds it."""
        metrics.QUEUE_DEPTH.inc()
        waiting = True
        started = time.perf_counter()
        generated = 0
        watch = served.watch
        budget = self.settings.generation_timeout_seconds
        deadline = asyncio.get_running_loop().time() + budget
        tally = metrics.request_tokens_var.get()
        try:
            metrics.PROMPT_TOKENS.labels(served.name).inc(len(prompt))
            if tally is not None:
                tally.prompt += len(prompt)
            async with aclosing(watch.generate(prompt, sampling, request_id, deadline, budget)) as chunks:
                async for chunk in chunks:
                    if waiting:
                        waiting = False
                        metrics.QUEUE_DEPTH.dec()
                        metrics.TIME_TO_FIRST_TOKEN.labels(served.name).observe(time.perf_counter() - started)
                    metrics.GENERATED_TOKENS.labels(served.name).inc(chunk.completion_tokens - generated)
                    if tally is not None:
                        tally.completion += chunk.completion_tokens - generated
                    generated = chunk.completion_tokens
                    yield chunk
        except ServiceError:
            raise
        except Exception as exc:
            await self.manager.supervisor.after_failure(served, watch, exc)
            raise
        finally:
            if waiting:
                metrics.QUEUE_DEPTH.dec()

    async def score(self, served: ServedModel, items: Sequence[ScoreInput]) -> list[float]:
        for index, item in enumerate(items):
            if not item.continuation_ids:
                raise InvalidArgument("the continuation is empty", field=f"items.{index}.continuation")
            if not item.prompt_ids:
                raise InvalidArgument("the context is empty", field=f"items.{index}")
            if len(item.prompt_ids) + len(item.continuation_ids) > served.max_context:
                raise InvalidArgument(
                    f"longer than the model's context of {served.max_context} tokens", field=f"items.{index}"
                )
        watch = served.watch
        budget = self.settings.generation_timeout_seconds
        try:
            async with asyncio.timeout(budget):
                return await watch.engine.score(items)
        except TimeoutError:
            raise GenerationTimeout(
                f"scoring did not finish within the server's deadline of {budget:g} s "
                f"(request id {request_id_var.get()})"
            ) from None
        except Exception as exc:
            await self.manager.supervisor.after_failure(served, watch, exc)
            raise


async def refusal_stream(text: str) -> AsyncIterator[GenerationChunk]:
    """The topic policy's answer, shaped like a generation so callers need no special case."""
    yield GenerationChunk(text, 0, "stop")


async def merged(
    streams: Sequence[AsyncIterator[GenerationChunk]],
) -> AsyncIterator[tuple[int, GenerationChunk]]:
    """Interleaves the n choices of one request as their chunks arrive."""
    if len(streams) == 1:
        async for chunk in streams[0]:
            yield 0, chunk
        return
    queue: asyncio.Queue[tuple[int, GenerationChunk | None | Exception]] = asyncio.Queue()

    async def pump(index: int, stream: AsyncIterator[GenerationChunk]) -> None:
        try:
            async for chunk in stream:
                await queue.put((index, chunk))
            await queue.put((index, None))
        except Exception as exc:  # handed to the consumer, which re-raises it
            await queue.put((index, exc))

    tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(streams)]
    try:
        remaining = len(tasks)
        while remaining:
            index, item = await queue.get()
            if item is None:
                remaining -= 1
            elif isinstance(item, Exception):
                raise item
            else:
                yield index, item
    finally:
        for task in tasks:
            task.cancel()


def sampling_for_choice(sampling: SamplingOptions, index: int) -> SamplingOptions:
    """With n > 1 and a seed, each choice gets its own seed so the choices differ yet stay reproducible."""
    if index == 0 or sampling.seed is None:
        return sampling
    return SamplingOptions(
        sampling.max_tokens, sampling.temperature, sampling.top_p, sampling.stop, sampling.seed + index
    )

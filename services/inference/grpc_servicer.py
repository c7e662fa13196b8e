"""gRPC InferenceService on the same engines as the HTTP API, for the evaluator and other services.

gRPC runs its handlers in a thread pool; the engines live on the gateway's event loop, so every call is
bridged onto that loop, and a stream the client cancels closes its generation (the engine frees the slot).
Every wait on the loop ends by the caller's deadline, and never later than a generation may run.
"""

import asyncio
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import Future

import grpc

from finetune.v1 import inference_pb2, inference_pb2_grpc
from ftcommon.errors import InvalidArgument
from ftcommon.logs import request_id_var
from services.inference.engine.base import GenerationChunk, ScoreInput
from services.inference.errors import GenerationTimeout
from services.inference.serving_base import GenerationService, SamplingRequest, Ticket, refusal_stream

FINISH_REASONS = {
    "stop": inference_pb2.FINISH_REASON_STOP,
    "length": inference_pb2.FINISH_REASON_LENGTH,
    "abort": inference_pb2.FINISH_REASON_ABORT,
}

_STREAM_END = object()
# Beyond the generation deadline (enforced on the loop), for the hand-over between threads.
_BRIDGE_MARGIN_SECONDS = 30.0


class InferenceServicer(inference_pb2_grpc.InferenceServiceServicer):
    def __init__(self, core: GenerationService, loop: asyncio.AbstractEventLoop, model_alias: str) -> None:
        self.core = core
        self.loop = loop
        self.model_alias = model_alias

    def Generate(self, request, context):  # noqa: N802 - gRPC method names
        text: list[str] = []
        last = GenerationChunk("", 0)
        ticket, prompt_tokens, stream = self._start(request, context)
        try:
            for chunk in self._iterate(stream, context):
                text.append(chunk.text)
                last = chunk
        finally:
            self._call(_end(ticket))
        return inference_pb2.GenerateResponse(
            text="".join(text),
            finish_reason=FINISH_REASONS.get(last.finish_reason or "", 0),
            prompt_tokens=prompt_tokens,
            completion_tokens=last.completion_tokens,
            model_id=ticket.served.model_id,
        )

    def GenerateStream(self, request, context):  # noqa: N802
        ticket, prompt_tokens, stream = self._start(request, context)
        try:
            for chunk in self._iterate(stream, context):
                yield inference_pb2.GenerateChunk(
                    text=chunk.text,
                    finish_reason=FINISH_REASONS.get(chunk.finish_reason or "", 0),
                    prompt_tokens=prompt_tokens,
                    completion_tokens=chunk.completion_tokens,
                )
        finally:
            self._call(_end(ticket))

    def Score(self, request, context):  # noqa: N802
        if not request.items:
            raise InvalidArgument("at least one item is required", field="items")
        return self._call(self._score(request), context)

    def ListModels(self, request, context):  # noqa: N802
        models = []
        for served in self.core.manager.served_models():
            aliases = [self.model_alias] if served is self.core.manager.default else []
            models.append(
                inference_pb2.ServedModel(
                    id=served.model_id,
                    name=served.name,
                    aliases=aliases,
                    engine=served.engine.name,
                    max_context=served.max_context,
                )
            )
        return inference_pb2.ListServedModelsResponse(models=models)

    # Bridging onto the event loop

    def _call(self, coroutine: object, context: grpc.ServicerContext | None = None) -> object:
        """Runs `coroutine` on the loop; waits until the caller's deadline at most (cancelling it then)."""
        request_id = request_id_var.get()
        wait = self.core.settings.generation_timeout_seconds + _BRIDGE_MARGIN_SECONDS
        remaining = context.time_remaining() if context is not None else None
        if remaining is not None:
            wait = min(wait, remaining)

        async def with_request_id() -> object:
            request_id_var.set(request_id)
            return await coroutine  # type: ignore[misc]

        future: Future = asyncio.run_coroutine_threadsafe(with_request_id(), self.loop)
        try:
            return future.result(max(wait, 0.0))
        except TimeoutError:
            if future.done():  # the coroutine's own TimeoutError
                raise
            future.cancel()
            raise GenerationTimeout(f"no answer within {wait:.1f} s (request id {request_id})") from None

    def _iterate(
        self, stream: AsyncIterator[GenerationChunk], context: grpc.ServicerContext
    ) -> Iterator[GenerationChunk]:
        finished = False
        try:
            while True:
                chunk = self._call(anext(stream, _STREAM_END), context)
                if chunk is _STREAM_END:
                    finished = True
                    return
                yield chunk  # type: ignore[misc]
        finally:
            if not finished:  # the client went away: stop generating for it
                self._call(stream.aclose())

    def _start(
        self, request: inference_pb2.GenerateRequest, context: grpc.ServicerContext
    ) -> tuple[Ticket, int, AsyncIterator[GenerationChunk]]:
        return self._call(self._prepare(request), context)  # type: ignore[return-value]

    async def _prepare(
        self, request: inference_pb2.GenerateRequest
    ) -> tuple[Ticket, int, AsyncIterator[GenerationChunk]]:
        ticket = await self.core.begin(request.model or None)
        try:
            served = ticket.served
            if request.messages:
                messages = [{"role": m.role, "content": m.content} for m in request.messages]
                prompt = self.core.chat_prompt(served, messages)
                refusal = self.core.policy.refusal_for(messages)
            else:
                prompt = self.core.text_prompt(served, request.prompt)
                refusal = None
            params = request.sampling
            if params.max_tokens < 0:
                raise InvalidArgument("must be at least 1", field="sampling.max_tokens")
            if not 0.0 <= params.temperature <= 2.0:
                raise InvalidArgument("must be between 0 and 2", field="sampling.temperature")
            if not 0.0 <= params.top_p <= 1.0:
                raise InvalidArgument("must be between 0 and 1", field="sampling.top_p")
            sampling = self.core.sampling(
                served,
                len(prompt),
                SamplingRequest(
                    max_tokens=params.max_tokens or None,
                    temperature=params.temperature,  # proto default 0: greedy, what evaluations want
                    top_p=params.top_p or 1.0,
                    stop=list(params.stop),
                    seed=params.seed if params.HasField("seed") else None,
                ),
            )
            stream = (
                refusal_stream(refusal)
                if refusal
                else self.core.stream(served, prompt, sampling, request_id_var.get() or "grpc")
            )
        except BaseException:
            ticket.end()
            raise
        return ticket, len(prompt), stream

    async def _score(self, request: inference_pb2.ScoreRequest) -> inference_pb2.ScoreResponse:
        ticket = await self.core.begin(request.model or None)
        try:
            served = ticket.served
            items = []
            for index, item in enumerate(request.items):
                if item.context:
                    messages = [{"role": m.role, "content": m.content} for m in item.context]
                    prompt = self.core.chat_prompt(served, messages)
                elif item.prompt:
                    prompt = self.core.text_prompt(served, item.prompt)
                else:
                    raise InvalidArgument("needs a context or a prompt", field=f"items.{index}")
                continuation = list(
                    served.tokenizer(item.continuation, add_special_tokens=False)["input_ids"]
                )
                items.append(ScoreInput(prompt, continuation))
            logprobs = await self.core.score(served, items)
        finally:
            ticket.end()
        return inference_pb2.ScoreResponse(
            results=[
                inference_pb2.ScoreResult(logprob=lp, tokens=len(item.continuation_ids))
                for lp, item in zip(logprobs, items, strict=True)
            ]
        )


async def _end(ticket: Ticket) -> None:
    ticket.end()

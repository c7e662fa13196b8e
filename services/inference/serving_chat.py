"""POST /v1/chat/completions: the stored chat template, the end-of-turn stop, streamed or whole answers."""

from collections.abc import AsyncIterator

from services.inference.engine.base import GenerationChunk
from services.inference.protocol import (
    AssistantMessage,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    DeltaMessage,
    Usage,
    new_completion_id,
    now,
    sse,
)
from services.inference.serving_base import (
    GenerationService,
    SamplingRequest,
    Ticket,
    merged,
    refusal_stream,
    sampling_for_choice,
)


class OpenAIServingChat:
    def __init__(self, core: GenerationService) -> None:
        self.core = core

    async def create(
        self, request: ChatCompletionRequest, request_id: str
    ) -> ChatCompletionResponse | AsyncIterator[str]:
        ticket = await self.core.begin(request.model)
        try:
            messages = [{"role": m.role, "content": m.text()} for m in request.messages]
            prompt = self.core.chat_prompt(ticket.served, messages)
            sampling = self.core.sampling(
                ticket.served,
                len(prompt),
                SamplingRequest(
                    request.requested_max_tokens(),
                    request.temperature,
                    request.top_p,
                    request.stop_list(),
                    request.seed,
                ),
            )
            refusal = self.core.policy.refusal_for(messages)
            streams = [
                refusal_stream(refusal)
                if refusal
                else self.core.stream(
                    ticket.served, prompt, sampling_for_choice(sampling, i), f"{request_id}-{i}"
                )
                for i in range(request.n)
            ]
        except BaseException:
            ticket.end()
            raise
        completion_id = new_completion_id("chatcmpl")
        if request.stream:
            return self._stream(request, ticket, len(prompt), streams, completion_id)
        try:
            response = await self._complete(ticket, len(prompt), streams, completion_id)
            if request.return_token_ids:
                response.prompt_token_ids = prompt
            return response
        finally:
            ticket.end()

    @staticmethod
    async def _complete(
        ticket: Ticket, prompt_tokens: int, streams: list[AsyncIterator[GenerationChunk]], completion_id: str
    ) -> ChatCompletionResponse:
        texts = [""] * len(streams)
        finish: list[str | None] = [None] * len(streams)
        generated = [0] * len(streams)
        async for index, chunk in merged(streams):
            texts[index] += chunk.text
            generated[index] = chunk.completion_tokens
            finish[index] = chunk.finish_reason or finish[index]
        choices = [
            ChatChoice(index=i, message=AssistantMessage(content=texts[i]), finish_reason=finish[i])
            for i in range(len(streams))
        ]
        return ChatCompletionResponse(
            id=completion_id,
            created=now(),
            model=ticket.served.name,
            choices=choices,
            usage=Usage(
                prompt_tokens=prompt_tokens,
                completion_tokens=sum(generated),
                total_tokens=prompt_tokens + sum(generated),
            ),
        )

    @staticmethod
    async def _stream(
        request: ChatCompletionRequest,
        ticket: Ticket,
        prompt_tokens: int,
        streams: list[AsyncIterator[GenerationChunk]],
        completion_id: str,
    ) -> AsyncIterator[str]:
        created = now()
        model = ticket.served.name

        def chunk(choices: list[ChatChunkChoice], usage: Usage | None = None) -> str:
            return sse(
                ChatCompletionChunk(
                    id=completion_id, created=created, model=model, choices=choices, usage=usage
                )
            )

        try:
            generated = [0] * len(streams)
            for index in range(len(streams)):
                yield chunk([ChatChunkChoice(index=index, delta=DeltaMessage(role="assistant", content=""))])
            async for index, piece in merged(streams):
                generated[index] = piece.completion_tokens
                if piece.text:
                    yield chunk([ChatChunkChoice(index=index, delta=DeltaMessage(content=piece.text))])
                if piece.finish_reason:
                    yield chunk(
                        [
                            ChatChunkChoice(
                                index=index, delta=DeltaMessage(), finish_reason=piece.finish_reason
                            )
                        ]
                    )
            if request.include_usage():
                total = sum(generated)
                yield chunk(
                    [],
                    Usage(
                        prompt_tokens=prompt_tokens,
                        completion_tokens=total,
                        total_tokens=prompt_tokens + total,
                    ),
                )
            yield sse("[DONE]")
        finally:
            ticket.end()

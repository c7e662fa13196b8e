"""POST /v1/completions: a raw prompt, no chat template."""

from collections.abc import AsyncIterator

from services.inference.protocol import (
    CompletionChoice,
    CompletionRequest,
    CompletionResponse,
    Usage,
    new_completion_id,
    now,
    sse,
)
from services.inference.serving_base import GenerationService, SamplingRequest, merged, sampling_for_choice


class OpenAIServingCompletion:
    def __init__(self, core: GenerationService) -> None:
        self.core = core

    async def create(
        self, request: CompletionRequest, request_id: str
    ) -> CompletionResponse | AsyncIterator[str]:
        ticket = await self.core.begin(request.model)
        try:
            text = request.prompt_text()
            prompt = self.core.text_prompt(ticket.served, text)
            sampling = self.core.sampling(
                ticket.served,
                len(prompt),
                SamplingRequest(
                    request.max_tokens, request.temperature, request.top_p, request.stop_list(), request.seed
                ),
            )
            streams = [
                self.core.stream(ticket.served, prompt, sampling_for_choice(sampling, i), f"{request_id}-{i}")
                for i in range(request.n)
            ]
        except BaseException:
            ticket.end()
            raise
        completion_id = new_completion_id("cmpl")
        created = now()
        model = ticket.served.name
        prefix = text if request.echo else ""

        if request.stream:

            async def events() -> AsyncIterator[str]:
                try:
                    generated = [0] * len(streams)
                    async for index, piece in merged(streams):
                        generated[index] = piece.completion_tokens
                        choice = CompletionChoice(
                            index=index, text=piece.text, finish_reason=piece.finish_reason
                        )
                        yield sse(
                            CompletionResponse(
                                id=completion_id, created=created, model=model, choices=[choice]
                            )
                        )
                    if request.include_usage():
                        usage = Usage(
                            prompt_tokens=len(prompt),
                            completion_tokens=sum(generated),
                            total_tokens=len(prompt) + sum(generated),
                        )
                        yield sse(
                            CompletionResponse(
                                id=completion_id, created=created, model=model, choices=[], usage=usage
                            )
                        )
                    yield sse("[DONE]")
                finally:
                    ticket.end()

            return events()

        try:
            texts = [prefix] * len(streams)
            finish: list[str | None] = [None] * len(streams)
            generated = [0] * len(streams)
            async for index, piece in merged(streams):
                texts[index] += piece.text
                generated[index] = piece.completion_tokens
                finish[index] = piece.finish_reason or finish[index]
        finally:
            ticket.end()
        return CompletionResponse(
            id=completion_id,
            created=created,
            model=model,
            choices=[
                CompletionChoice(index=i, text=texts[i], finish_reason=finish[i]) for i in range(len(streams))
            ],
            usage=Usage(
                prompt_tokens=len(prompt),
                completion_tokens=sum(generated),
                total_tokens=len(prompt) + sum(generated),
            ),
        )

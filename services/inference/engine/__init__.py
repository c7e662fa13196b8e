"""Engines behind one interface; `load_engine` picks one by configuration."""

import logging
import tempfile
from pathlib import Path

from ftcommon.hardware import configure_torch_threads, cpu_has_native_bf16, thread_count
from ftcommon.logs import log_fields
from services.inference.config import InferenceSettings
from services.inference.engine.base import EngineClient, EngineModel
from services.inference.engine.parent_death import children_die_with_this_process
from services.inference.engine.precision import ServingDtype, dtype_reason, serving_dtype

logger = logging.getLogger(__name__)


def resolved_engine_name(settings: InferenceSettings) -> str:
    if settings.engine != "auto":
        return settings.engine
    from services.inference.engine.vllm_engine import vllm_available

    return "vllm" if vllm_available() else "transformers"


def resolved_dtype(settings: InferenceSettings) -> tuple[ServingDtype, str]:
    """The dtype the configured engine loads weights in on this host, and why."""
    import torch

    facts = (settings.dtype, resolved_engine_name(settings), torch.cuda.is_available(), cpu_has_native_bf16())
    return serving_dtype(*facts), dtype_reason(*facts)


def engine_run_dir(settings: InferenceSettings) -> Path:
    """Where the gateway keeps the engine launcher and the record of its engine processes."""
    return settings.data_dir / "inference-engines"


async def load_engine(settings: InferenceSettings, model: EngineModel) -> EngineClient:
    engine_name = resolved_engine_name(settings)
    dtype, reason = resolved_dtype(settings)
    log_fields(logger, logging.INFO, "engine dtype", engine=engine_name, dtype=dtype, reason=reason)
    if engine_name == "vllm":
        from services.inference.engine.vllm_engine import VllmEngine

        cache_dir = settings.cache_dir or Path(tempfile.gettempdir()) / "ft-inference-cache"
        with children_die_with_this_process(engine_run_dir(settings)):
            return await VllmEngine.load(
                model,
                settings.max_batch_size,
                cache_dir,
                settings.vllm_kv_cache_gib,
                dtype,
                thread_count(settings.torch_threads),
            )
    from services.inference.engine.transformers_engine import TransformersEngine

    configure_torch_threads(thread_count(settings.torch_threads))
    return await TransformersEngine.load(model, settings.max_batch_size, dtype)

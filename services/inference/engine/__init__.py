"""Engines behind one interface; `load_engine` picks one by configuration."""

import tempfile
from pathlib import Path

from services.inference.config import InferenceSettings
from services.inference.engine.base import EngineClient, EngineModel
from services.inference.engine.parent_death import children_die_with_this_process


def resolved_engine_name(settings: InferenceSettings) -> str:
    if settings.engine != "auto":
        return settings.engine
    from services.inference.engine.vllm_engine import vllm_available

    return "vllm" if vllm_available() else "transformers"


def engine_run_dir(settings: InferenceSettings) -> Path:
    """Where the gateway keeps the engine launcher and the record of its engine processes."""
    return settings.data_dir / "inference-engines"


async def load_engine(settings: InferenceSettings, model: EngineModel) -> EngineClient:
    if resolved_engine_name(settings) == "vllm":
        from services.inference.engine.vllm_engine import VllmEngine

        cache_dir = settings.cache_dir or Path(tempfile.gettempdir()) / "ft-inference-cache"
        with children_die_with_this_process(engine_run_dir(settings)):
            return await VllmEngine.load(
                model, settings.max_batch_size, cache_dir, settings.vllm_kv_cache_gib
            )
    from services.inference.engine.transformers_engine import TransformersEngine

    if settings.torch_threads:
        import torch

        torch.set_num_threads(settings.torch_threads)
    return await TransformersEngine.load(model, settings.max_batch_size)

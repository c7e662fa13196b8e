"""Engines behind one interface; `load_engine` picks one by configuration."""

import tempfile
from pathlib import Path

from services.inference.config import InferenceSettings
from services.inference.engine.base import EngineClient, EngineModel


def resolved_engine_name(settings: InferenceSettings) -> str:
    if settings.engine != "auto":
        return settings.engine
    from services.inference.engine.vllm_engine import vllm_available

    return "vllm" if vllm_available() else "transformers"


async def load_engine(settings: InferenceSettings, model: EngineModel) -> EngineClient:
    if resolved_engine_name(settings) == "vllm":
        from services.inference.engine.vllm_engine import VllmEngine

        cache_dir = settings.cache_dir or Path(tempfile.gettempdir()) / "ft-inference-cache"
        return await VllmEngine.load(model, settings.max_batch_size, cache_dir, settings.vllm_kv_cache_gib)
    from services.inference.engine.transformers_engine import TransformersEngine

    if settings.torch_threads:
        import torch

        torch.set_num_threads(settings.torch_threads)
    return await TransformersEngine.load(model, settings.max_batch_size)

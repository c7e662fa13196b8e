"""The inference gateway's settings (env prefix FT_INFERENCE_): one process serves HTTP and gRPC."""

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from ftcommon.settings import ServiceSettings, peer_address

DEFAULT_BASE_MODEL_NAME = "smollm2-135m-instruct"


class InferenceSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="FT_INFERENCE_", extra="ignore")

    port: int = 50054  # gRPC InferenceService
    http_port: int = 8000  # OpenAI-compatible REST API
    trainer_address: str = peer_address("trainer")
    rpc_timeout_seconds: float = Field(30.0, gt=0)
    # The OpenAI fine-tuning surface (/v1/files, /v1/fine_tuning): uploads go to the data service.
    data_address: str = peer_address("data")
    # POST /v1/files bodies may be this large (other requests keep max_request_bytes).
    max_file_bytes: int = Field(200 * 1024 * 1024, ge=1024)
    # How often the gateway moves fine-tuning jobs along (prepare done -> training -> model named).
    fine_tuning_poll_seconds: float = Field(1.0, gt=0)
    # learning_rate_multiplier scales this (the trainer's default learning rate for LoRA).
    fine_tuning_base_learning_rate: float = Field(1e-3, gt=0)

    # auto: vLLM when it imports, else transformers.
    engine: Literal["auto", "vllm", "transformers"] = "auto"
    # auto: bfloat16 on a GPU, and for the transformers engine on a CPU that computes bf16 natively
    # (AVX512-BF16, AMX); float32 elsewhere (engine/precision.py says why vLLM on CPU stays float32).
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    # What requests without a model (and with this name) get: an alias, name or id in the registry.
    model: str = "prod"
    # Served while `model` is an alias nobody has set yet, so a fresh install answers at once.
    fallback_model: str = DEFAULT_BASE_MODEL_NAME
    # Other registry models load on demand (the evaluator compares base and tuned); the least recently used
    # one is drained and freed beyond this count.
    max_loaded_models: int = Field(2, ge=1)
    # Caps the context below the model's own when memory (vLLM's KV cache) is tight; 0 keeps the model's.
    max_model_len: int = Field(4096, ge=0)
    default_max_tokens: int = Field(256, ge=1)

    # Limits. Requests admitted (running or waiting for a batch slot) beyond max_queue get 503.
    max_queue: int = Field(64, ge=1)
    max_batch_size: int = Field(32, ge=1)
    max_request_bytes: int = Field(1_000_000, ge=1024)
    require_api_key: bool = True
    # Per key, unless the key carries its own limit.
    rate_limit_per_minute: int = Field(600, ge=1)

    # Browser origins allowed to call the API; empty keeps CORS closed.
    cors_origins: list[str] = []
    # Optional topic policy: a user turn matching one of these (case-insensitive regexes) gets the refusal
    # without reaching the model.
    blocked_topics: list[str] = []
    refusal_message: str = "Let's keep the discussion relevant to the topics this assistant is for."

    # Supervision. A generation ends with 504 once it has run this long.
    generation_timeout_seconds: float = Field(300.0, gt=0)
    # An engine that generations are waiting on and that produced nothing for this long is declared stalled.
    engine_stall_seconds: float = Field(120.0, gt=0)
    # How often every engine's health (and progress) is checked between requests.
    engine_check_interval_seconds: float = Field(5.0, gt=0)
    # A lost engine is rebuilt up to this many times, waiting backoff, 2x backoff... between tries; after
    # that /healthz fails so that the orchestrator restarts the gateway.
    engine_restart_attempts: int = Field(3, ge=1)
    engine_restart_backoff_seconds: float = Field(2.0, ge=0)

    # Compute threads of either engine; 0: every CPU this process may use (affinity and cgroup quota).
    torch_threads: int = Field(0, ge=0)
    # vLLM engine
    vllm_kv_cache_gib: int = Field(2, ge=1)
    # Where vLLM and torch compile caches go (they otherwise land in the home and system temp folders).
    cache_dir: Path | None = None
    # Access logs leave prompts and answers out unless this is on.
    log_prompts: bool = False

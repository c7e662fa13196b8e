"""The trainer service's settings (env prefix FT_TRAINER_), shared by the server, workers and job processes."""

from pydantic_settings import SettingsConfigDict

from ftcommon.settings import ServiceSettings, peer_address

DEFAULT_BASE_MODEL_NAME = "smollm2-135m-instruct"


class TrainerSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="FT_TRAINER_", extra="ignore")

    port: int = 50052
    # Local folders RegisterBaseModel may read; empty allows any local folder (single-user default).
    model_roots: list[str] = []
    alias_poll_seconds: float = 0.5
    data_address: str = peer_address("data")  # prepared versions
    data_timeout_seconds: float = 30.0
    # Workers: how often they look for jobs and heartbeat, and when a silent worker's job is requeued.
    worker_poll_seconds: float = 1.0
    heartbeat_seconds: float = 2.0
    stale_after_seconds: float = 30.0
    # A job whose worker was lost this many times fails instead of being requeued again.
    max_attempts: int = 3
    # Seconds a cancelled job process gets to exit on SIGTERM before SIGKILL.
    cancel_grace_seconds: float = 10.0
    # Threads per training process; 0 leaves torch's default (all cores).
    torch_threads: int = 0

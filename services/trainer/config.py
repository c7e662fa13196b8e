"""The trainer service's settings (env prefix FT_TRAINER_)."""

from pydantic_settings import SettingsConfigDict

from ftcommon.settings import ServiceSettings

DEFAULT_BASE_MODEL_NAME = "smollm2-135m-instruct"


class TrainerSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="FT_TRAINER_", extra="ignore")

    port: int = 50052
    # Local folders RegisterBaseModel may read; empty allows any local folder (single-user default).
    model_roots: list[str] = []
    alias_poll_seconds: float = 0.5

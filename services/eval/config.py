"""The eval service's settings (env prefix FT_EVAL_)."""

from pathlib import Path
from typing import Any

from pydantic import Field, model_validator
from pydantic_settings import SettingsConfigDict

from ftcommon.job_runtime import JobRuntimeSettings, fold_older_job_setting_names
from ftcommon.settings import ServiceSettings, peer_address

DEFAULT_JUDGE_RUBRIC = (
    "Grade the ANSWER to the QUESTION against the REFERENCE answer. 5: says the same as the reference, "
    "correct and complete. 4: correct, minor omissions. 3: partly correct. 2: mostly wrong or off the point. "
    "1: wrong, empty or unrelated. Reply with the grade only, as 'Grade: N'."
)


class EvalJobSettings(JobRuntimeSettings):
    # A run talks to other services for minutes; a silent minute is a lost worker, and one retry suffices.
    heartbeat_seconds: float = Field(5.0, gt=0)
    stale_after_seconds: float = Field(60.0, gt=0)
    max_attempts: int = Field(2, ge=1)


class EvalSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="FT_EVAL_", extra="ignore", env_nested_delimiter="__")

    port: int = 50053
    inference_address: str = peer_address("inference")
    data_address: str = peer_address("data")
    trainer_address: str = peer_address("trainer")
    rpc_timeout_seconds: float = Field(30.0, gt=0)
    # One Generate call can wait for a batch slot and then generate max_tokens on CPU.
    generate_timeout_seconds: float = Field(600.0, gt=0)

    # Concurrent Generate calls in flight: the gateway's engine batches them, so this should be about its
    # batch size. One example at a time would leave the engine with batches of one.
    concurrency: int = Field(16, ge=1)
    # Choices per Score call (each call is one batched forward pass in the engine).
    score_batch_size: int = Field(32, ge=1)

    default_max_tokens: int = Field(128, ge=1)
    default_max_examples: int = Field(0, ge=0)  # 0: the whole split
    bootstrap_resamples: int = Field(2000, ge=100)

    # The promotion rule when a request sets none.
    primary_metric: str = "token_f1"
    min_delta: float = 0.0
    min_refusal_rate: float = Field(0.0, ge=0, le=1)
    max_wrong_refusal_rate: float = Field(0.2, ge=0, le=1)

    judge_model: str = ""
    judge_rubric: str = DEFAULT_JUDGE_RUBRIC

    # Runs are executed in this process (FT_EVAL_JOBS__POLL_SECONDS, ...) unless the worker is disabled.
    jobs: EvalJobSettings = EvalJobSettings()
    worker_enabled: bool = True

    @model_validator(mode="before")
    @classmethod
    def _older_job_setting_names(cls, data: Any) -> Any:
        return fold_older_job_setting_names(
            data,
            "FT_EVAL_",
            {
                name: name
                for name in ("poll_seconds", "heartbeat_seconds", "stale_after_seconds", "max_attempts")
            },
        )

    # Folders benchmark files may be read from (symlinks count where they point); empty means the data
    # dir and the working directory.
    benchmark_roots: list[Path] = []

    def resolved_benchmark_roots(self) -> tuple[Path, ...]:
        roots = self.benchmark_roots or [self.data_dir, Path.cwd()]
        return tuple(root.resolve() for root in roots)

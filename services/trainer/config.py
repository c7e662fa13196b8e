"""The trainer service's settings (env prefix FT_TRAINER_), shared by the server, workers and job processes."""

from pathlib import Path
from typing import Any

from pydantic import Field, model_validator
from pydantic_settings import SettingsConfigDict

from ftcommon.job_runtime import JobRuntimeSettings, fold_older_job_setting_names
from ftcommon.settings import DEFAULT_BASE_MODEL_NAME as DEFAULT_BASE_MODEL_NAME
from ftcommon.settings import ServiceSettings, peer_address


class TrainJobSettings(JobRuntimeSettings):
    poll_seconds: float = Field(1.0, gt=0)


class TrainerSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="FT_TRAINER_", extra="ignore", env_nested_delimiter="__")

    port: int = 50052
    # Local folders RegisterBaseModel may read (symlinks count where they point); empty means
    # data_dir/base_models and ./var/base_models, where `make setup` converts the default model.
    model_roots: list[Path] = []
    alias_poll_seconds: float = 0.5
    data_address: str = peer_address("data")  # prepared versions
    data_timeout_seconds: float = 30.0
    # Evaluation evidence: the registry's promotion gate reads runs there (an unreachable eval service
    # refuses the promotion), and exported model cards (where it is left out, saying so).
    eval_address: str = peer_address("eval")
    eval_timeout_seconds: float = 10.0
    # Workers (FT_TRAINER_JOBS__POLL_SECONDS, ...): a lost worker's job resumes from its last checkpoint.
    jobs: TrainJobSettings = TrainJobSettings()
    # Seconds a cancelled job process gets to exit on SIGTERM before SIGKILL.
    cancel_grace_seconds: float = 10.0
    # Threads per training process; 0: every CPU the worker may use (affinity and cgroup quota).
    torch_threads: int = 0
    # The latest intermediate checkpoints of a job merged into servable models when it succeeds (OpenAI's
    # fine_tuned_model_checkpoint; it keeps the last epochs' too). Each costs a merge and a model's disk space.
    servable_checkpoints: int = Field(2, ge=0)
    # A team's own MLflow tracking server (http://host:5000): each job's hyperparameters, lineage tags and
    # step metrics go there as one run of this experiment. Empty: off, and mlflow is never imported. MLflow
    # is best effort: each request is bounded by the timeout and retries, and the first error only warns.
    mlflow_tracking_uri: str = ""
    mlflow_experiment_name: str = "finetune-platform"
    mlflow_timeout_seconds: float = Field(5.0, gt=0)
    mlflow_max_retries: int = Field(1, ge=0)

    @model_validator(mode="before")
    @classmethod
    def _older_job_setting_names(cls, data: Any) -> Any:
        return fold_older_job_setting_names(
            data,
            "FT_TRAINER_",
            {
                "worker_poll_seconds": "poll_seconds",
                "heartbeat_seconds": "heartbeat_seconds",
                "stale_after_seconds": "stale_after_seconds",
                "max_attempts": "max_attempts",
            },
        )

    def resolved_model_roots(self) -> tuple[Path, ...]:
        roots = self.model_roots or [self.data_dir / "base_models", Path.cwd() / "var" / "base_models"]
        return tuple(root.resolve() for root in roots)

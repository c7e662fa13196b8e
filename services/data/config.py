"""The data service's settings (env prefix FT_DATA_)."""

from pathlib import Path
from typing import Any

from pydantic import Field, model_validator
from pydantic_settings import SettingsConfigDict

from ftcommon.job_runtime import JobRuntimeSettings, fold_older_job_setting_names
from ftcommon.settings import ServiceSettings, peer_address
from ftcommon.sources import LOCAL, SourcePolicy


class PrepareJobSettings(JobRuntimeSettings):
    # A prepare is restarted from scratch when its worker is lost; lost workers are noticed sooner.
    stale_after_seconds: float = Field(10.0, gt=0)


class DataSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="FT_DATA_", extra="ignore", env_nested_delimiter="__")

    port: int = 50051
    # Folders RegisterDataset may read from; empty means the data dir and the working directory.
    allowed_roots: list[Path] = []
    # What else RegisterDataset may read: "file" (local, under allowed_roots) and, only when listed,
    # "http", "https", "s3"; remote sources must name a host (s3: a bucket) in source_hosts. Loopback,
    # link-local and private addresses stay refused unless their network is in source_private_networks.
    source_protocols: list[str] = [LOCAL]
    source_hosts: list[str] = []
    source_private_networks: list[str] = []
    source_timeout_seconds: float = Field(60.0, gt=0)
    max_upload_bytes: int = Field(200 * 1024 * 1024, gt=0)
    # One row (a JSONL line, a CSV record, a JSON or Parquet element) longer than this is rejected.
    max_row_bytes: int = Field(1024 * 1024, gt=0)
    trainer_address: str = peer_address("trainer")
    trainer_timeout_seconds: float = Field(30.0, gt=0)
    # Prepare jobs run in this process (FT_DATA_JOBS__WORKERS, FT_DATA_JOBS__POLL_SECONDS, ...).
    jobs: PrepareJobSettings = PrepareJobSettings()
    # Near duplicates: Jaccard similarity of word 3-shingles at or above this (one changed word in a 20-word row gives 0.74).
    near_duplicate_threshold: float = Field(0.7, gt=0, le=1)
    # Prepare encodes rows in this process and in one helper process at once (two CPUs' work) when a
    # dataset keeps at least this many rows and a second CPU is usable; 0: never. The helper costs ~2 s of
    # CPU to start and ~400 MB while it runs (services/data/row_encoding.py).
    encoding_helper_min_rows: int = Field(30_000, ge=0)
    # GenerateDataset: documents to Q&A pairs. A document over this size is refused with its name.
    max_document_bytes: int = Field(20 * 1024 * 1024, gt=0)
    # The generator model is reached through the inference service (its gRPC API), one reply at most this long.
    inference_address: str = peer_address("inference")
    generator_timeout_seconds: float = Field(120.0, gt=0)
    # Generator calls in flight at once, so the gateway's engine batches them.
    generator_concurrency: int = Field(4, ge=1)
    # Generate jobs run in this process too (FT_DATA_GENERATE_JOBS__WORKERS, ...).
    generate_jobs: JobRuntimeSettings = JobRuntimeSettings()

    @model_validator(mode="before")
    @classmethod
    def _older_job_setting_names(cls, data: Any) -> Any:
        return fold_older_job_setting_names(
            data,
            "FT_DATA_",
            {
                "prepare_workers": "workers",
                "job_poll_seconds": "poll_seconds",
                "job_heartbeat_seconds": "heartbeat_seconds",
                "job_stale_seconds": "stale_after_seconds",
                "job_max_attempts": "max_attempts",
            },
        )

    def resolved_allowed_roots(self) -> list[Path]:
        roots = self.allowed_roots or [self.data_dir, Path.cwd()]
        return [root.resolve() for root in roots]

    def source_policy(self) -> SourcePolicy:
        return SourcePolicy.build(
            self.resolved_allowed_roots(),
            self.source_protocols,
            self.source_hosts,
            self.source_private_networks,
        )

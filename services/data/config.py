"""The data service's settings (env prefix FT_DATA_)."""

from pathlib import Path

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from ftcommon.settings import ServiceSettings, peer_address
from ftcommon.sources import LOCAL, SourcePolicy


class DataSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="FT_DATA_", extra="ignore")

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
    # Background threads running prepare jobs in this process.
    prepare_workers: int = Field(1, ge=1)
    job_poll_seconds: float = Field(0.5, gt=0)
    job_heartbeat_seconds: float = Field(2.0, gt=0)
    # A running job whose heartbeat is older than this lost its worker (a killed process) and is requeued.
    job_stale_seconds: float = Field(10.0, gt=0)
    # A job that keeps killing its worker is failed instead of being retried forever.
    job_max_attempts: int = Field(3, ge=1)
    # Near duplicates: Jaccard similarity of word 3-shingles at or above this (one changed word in a 20-word row gives 0.74).
    near_duplicate_threshold: float = Field(0.7, gt=0, le=1)

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

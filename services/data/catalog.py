"""Datasets and prepared versions as rows in the data service's database.

A dataset or version row is inserted only after all its artifacts are stored, and rows are the only
way to reach them: a crash before the insert leaves unreferenced content-addressed blobs, never a
half-registered dataset.
"""

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from ftcommon.artifacts import Artifact
from ftcommon.db import Database
from ftcommon.errors import NotFound
from services.data import tables


@dataclass(frozen=True)
class DatasetRecord:
    id: str
    name: str
    format: int
    schema: int
    source: str
    raw: Artifact
    normalized: Artifact
    report_uri: str
    counts: dict[str, int]
    created_at: datetime


@dataclass(frozen=True)
class VersionRecord:
    id: str
    dataset_id: str
    base_model_id: str
    request: dict[str, Any]
    artifact: Artifact
    split_stats: dict[str, dict[str, float]]
    dropped_too_long: int
    truncated: int
    refusal_rows: int
    tokenizer_sha256: str
    chat_template_sha256: str
    created_at: datetime
    # Per split: PII left, redacted and allowed (see pii.pii_counts); empty for versions made before.
    split_pii: dict[str, dict[str, Any]] = field(default_factory=dict)
    # What prepare advises acting on (split_advice.py); empty for versions made before it advised.
    warnings: list[str] = field(default_factory=list)
    preference_pairs: bool = False  # every row is a preference pair (what DPO trains on)


class Catalog:
    def __init__(self, db: Database) -> None:
        self.db = db

    # Datasets

    def add_dataset(self, record: DatasetRecord) -> None:
        with self.db.begin() as conn:
            conn.execute(
                tables.datasets.insert().values(
                    id=record.id,
                    name=record.name,
                    format=record.format,
                    schema=record.schema,
                    source=record.source,
                    raw_uri=record.raw.uri,
                    raw_sha256=record.raw.sha256,
                    raw_size=record.raw.size_bytes,
                    normalized_uri=record.normalized.uri,
                    normalized_sha256=record.normalized.sha256,
                    normalized_size=record.normalized.size_bytes,
                    report_uri=record.report_uri,
                    counts=json.dumps(record.counts),
                    created_at=record.created_at,
                )
            )

    def get_dataset(self, dataset_id: str) -> DatasetRecord:
        with self.db.begin() as conn:
            row = (
                conn.execute(select(tables.datasets).where(tables.datasets.c.id == dataset_id))
                .mappings()
                .first()
            )
        if row is None:
            raise NotFound(f"dataset {dataset_id} does not exist", field="id")
        return _dataset(row)

    def list_datasets(self, offset: int, limit: int) -> list[DatasetRecord]:
        query = select(tables.datasets).order_by(tables.datasets.c.created_at.desc(), tables.datasets.c.id)
        with self.db.begin() as conn:
            rows = conn.execute(query.offset(offset).limit(limit)).mappings().all()
        return [_dataset(r) for r in rows]

    def delete_dataset(self, dataset_id: str) -> None:
        with self.db.begin() as conn:
            deleted = conn.execute(
                tables.datasets.delete().where(tables.datasets.c.id == dataset_id)
            ).rowcount
        if deleted != 1:
            raise NotFound(f"dataset {dataset_id} does not exist", field="id")

    # Prepared versions

    def add_version(self, record: VersionRecord) -> VersionRecord:
        """Inserts the version; when the same inputs were prepared concurrently, returns the first one."""
        try:
            with self.db.begin() as conn:
                conn.execute(
                    tables.prepared_versions.insert().values(
                        id=record.id,
                        dataset_id=record.dataset_id,
                        base_model_id=record.base_model_id,
                        request=json.dumps(record.request, sort_keys=True),
                        artifact_uri=record.artifact.uri,
                        artifact_sha256=record.artifact.sha256,
                        artifact_size=record.artifact.size_bytes,
                        split_stats=json.dumps(record.split_stats),
                        dropped_too_long=record.dropped_too_long,
                        truncated=record.truncated,
                        refusal_rows=record.refusal_rows,
                        tokenizer_sha256=record.tokenizer_sha256,
                        chat_template_sha256=record.chat_template_sha256,
                        created_at=record.created_at,
                        split_pii=json.dumps(record.split_pii),
                        warnings=json.dumps(record.warnings),
                        preference_pairs=int(record.preference_pairs),
                    )
                )
        except IntegrityError:
            return self.get_version(record.id)
        return record

    def find_version(self, version_id: str) -> VersionRecord | None:
        with self.db.begin() as conn:
            row = (
                conn.execute(
                    select(tables.prepared_versions).where(tables.prepared_versions.c.id == version_id)
                )
                .mappings()
                .first()
            )
        return _version(row) if row else None

    def get_version(self, version_id: str) -> VersionRecord:
        record = self.find_version(version_id)
        if record is None:
            raise NotFound(f"prepared version {version_id} does not exist", field="id")
        return record

    def list_versions(self, dataset_id: str, offset: int, limit: int) -> list[VersionRecord]:
        versions = tables.prepared_versions
        query = select(versions).order_by(versions.c.created_at.desc(), versions.c.id)
        if dataset_id:
            query = query.where(versions.c.dataset_id == dataset_id)
        with self.db.begin() as conn:
            rows = conn.execute(query.offset(offset).limit(limit)).mappings().all()
        return [_version(r) for r in rows]


def _dataset(row: Any) -> DatasetRecord:
    return DatasetRecord(
        id=row["id"],
        name=row["name"],
        format=row["format"],
        schema=row["schema"],
        source=row["source"],
        raw=Artifact(row["raw_uri"], row["raw_sha256"], row["raw_size"]),
        normalized=Artifact(row["normalized_uri"], row["normalized_sha256"], row["normalized_size"]),
        report_uri=row["report_uri"],
        counts=json.loads(row["counts"]),
        created_at=row["created_at"],
    )


def _version(row: Any) -> VersionRecord:
    return VersionRecord(
        id=row["id"],
        dataset_id=row["dataset_id"],
        base_model_id=row["base_model_id"],
        request=json.loads(row["request"]),
        artifact=Artifact(row["artifact_uri"], row["artifact_sha256"], row["artifact_size"]),
        split_stats=json.loads(row["split_stats"]),
        dropped_too_long=row["dropped_too_long"],
        truncated=row["truncated"],
        refusal_rows=row["refusal_rows"],
        tokenizer_sha256=row["tokenizer_sha256"],
        chat_template_sha256=row["chat_template_sha256"],
        created_at=row["created_at"],
        split_pii=json.loads(row["split_pii"] or "{}"),
        warnings=json.loads(row["warnings"] or "[]"),
        preference_pairs=bool(row["preference_pairs"]),
    )

"""Accepting a file as a dataset: ingest it, store its artifacts, then (last) insert its row."""

import json
import tempfile
from pathlib import Path

from ftcommon.artifacts import ArtifactStore
from ftcommon.db import utcnow
from ftcommon.ids import new_id
from services.data.catalog import Catalog, DatasetRecord
from services.data.collection_pause import collection_paused
from services.data.config import DataSettings
from services.data.ingest import IngestOptions, ingest


def register_dataset(
    data: bytes,
    name: str,
    source: str,
    options: IngestOptions,
    settings: DataSettings,
    store: ArtifactStore,
    catalog: Catalog,
    dataset_id: str = "",
) -> DatasetRecord:
    """Raises InvalidArgument (and stores nothing) when the file is rejected. A job that registers its
    result passes an id of its own (dataset_id), so a retry after a crash cannot register it twice."""
    with collection_paused():
        result = ingest(data, options, settings.max_row_bytes, settings.near_duplicate_threshold)
    raw = store.put_bytes(data)
    with tempfile.TemporaryDirectory(dir=_scratch(settings)) as scratch:
        normalized_path = Path(scratch) / "normalized.jsonl"
        with open(normalized_path, "w", encoding="utf-8") as handle:
            for conversation in result.kept:
                handle.write(json.dumps(conversation.to_json(), ensure_ascii=False) + "\n")
        normalized = store.put_file(normalized_path)
    report = store.put_bytes(json.dumps(result.report(), ensure_ascii=False).encode())
    record = DatasetRecord(
        id=dataset_id or new_id("ds"),
        name=name or Path(options.filename or source).name or "dataset",
        format=int(result.file_format),
        schema=int(result.schema),
        source=source,
        raw=raw,
        normalized=normalized,
        report_uri=report.uri,
        counts=result.counts,
        created_at=utcnow(),
    )
    catalog.add_dataset(record)
    return record


def _scratch(settings: DataSettings) -> Path:
    """Scratch space beside the data, not in a small system /tmp."""
    path = settings.data_dir / "tmp"
    path.mkdir(parents=True, exist_ok=True)
    return path

"""The seed course's lamini_docs data (skipped when the shared datasets are absent)."""

from pathlib import Path

import grpc
import pytest
from data_fixtures import prepare, report, upload

from finetune.v1 import data_pb2


def test_lamini_docs_report_and_prepare(data_stub, lamini_docs: Path):
    dataset = upload(data_stub, lamini_docs.read_bytes(), lamini_docs.name, name="lamini")
    result = report(data_stub, dataset.id)
    assert result.schema == data_pb2.DATASET_SCHEMA_QUESTION_ANSWER
    lines = lamini_docs.read_text().splitlines()
    empty_row = lines.index('{"question": "", "answer": ""}') + 1
    assert (empty_row, "empty answer", "answer") in {(r.line, r.reason, r.field) for r in result.rejected}
    assert result.counts.rows_total == len(lines)
    assert result.counts.rows_kept == len(lines) - result.counts.rows_rejected
    assert result.counts.near_duplicates > 0
    assert any(not group.exact and group.similarity < 1.0 for group in result.duplicates)

    # Its PII is Lamini's own contact addresses: strict mode refuses them until they are allowed.
    with pytest.raises(grpc.RpcError) as refused:
        data_stub.PrepareDataset(
            data_pb2.PrepareDatasetRequest(
                dataset_id=dataset.id,
                base_model="smollm2-135m-instruct",
                pii=data_pb2.PiiOptions(strict=True),
            )
        )
    assert (
        "line 6: email at lamini.ai in messages[1] (assistant)" in refused.value.details()
        and "email at powerml.co" in refused.value.details()
    )
    job = prepare(
        data_stub,
        dataset_id=dataset.id,
        max_seq_len=1024,
        refusals=data_pb2.RefusalOptions(domain="Lamini", fraction=0.15),
        pii=data_pb2.PiiOptions(strict=True, allow=["lamini.ai", "powerml.co"]),
    )
    version = data_stub.GetPreparedVersion(data_pb2.GetPreparedVersionRequest(id=job.prepared_version_id))
    assert version.refusal_rows == round(0.15 * result.counts.rows_kept)
    examples = sum(version.split_stats[s].examples for s in ("train", "validation", "test"))
    assert examples == result.counts.rows_kept + version.refusal_rows - version.dropped_too_long
    assert sum(p.allowed for p in version.split_pii.values()) == 6
    assert sum(p.findings for p in version.split_pii.values()) == 0

"""Ingestion over real gRPC: every format and schema, every validation rule, duplicates and PII."""

import io
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from data_fixtures import dataset_ids, jsonl, qa_rows, report, upload

from finetune.v1 import data_pb2

QA = [
    {"question": "How do I upload a dataset?", "answer": "Run ftctl data upload with the file."},
    {"question": "How do I prepare it?", "answer": "Run ftctl data prepare with a base model."},
]


def conversations(stub, dataset_id: str) -> list[list[tuple[str, str]]]:
    rows = stub.PreviewDataset(data_pb2.PreviewDatasetRequest(id=dataset_id, limit=100)).rows
    return [[(m.role, m.content) for m in row.messages] for row in rows]


def parquet_bytes(rows: list[dict]) -> bytes:
    sink = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), sink)
    return sink.getvalue()


EXPECTED_QA = [
    [("user", "How do I upload a dataset?"), ("assistant", "Run ftctl data upload with the file.")],
    [("user", "How do I prepare it?"), ("assistant", "Run ftctl data prepare with a base model.")],
]


@pytest.mark.parametrize(
    ("filename", "data", "file_format"),
    [
        ("qa.jsonl", jsonl(QA), data_pb2.DATASET_FORMAT_JSONL),
        ("qa.json", json.dumps(QA).encode(), data_pb2.DATASET_FORMAT_JSON),
        (
            "qa.csv",
            b"question,answer\nHow do I upload a dataset?,Run ftctl data upload with the file.\n"
            b'"How do I prepare it?","Run ftctl data prepare with a base model."\n',
            data_pb2.DATASET_FORMAT_CSV,
        ),
        ("qa.parquet", parquet_bytes(QA), data_pb2.DATASET_FORMAT_PARQUET),
    ],
)
def test_each_format_is_detected_and_read(data_stub, filename, data, file_format):
    dataset = upload(data_stub, data, filename)
    assert dataset.format == file_format
    assert dataset.schema == data_pb2.DATASET_SCHEMA_QUESTION_ANSWER
    assert dataset.counts.rows_kept == 2 and dataset.counts.rows_rejected == 0
    assert conversations(data_stub, dataset.id) == EXPECTED_QA
    assert data_stub.GetDataset(data_pb2.GetDatasetRequest(id=dataset.id)).raw.size_bytes == len(data)


@pytest.mark.parametrize(
    ("rows", "schema", "expected"),
    [
        (
            [
                {
                    "instruction": "Summarise the doc",
                    "input": "Uploads are chunked.",
                    "output": "Chunked uploads.",
                }
            ],
            data_pb2.DATASET_SCHEMA_ALPACA,
            [("user", "Summarise the doc\n\nUploads are chunked."), ("assistant", "Chunked uploads.")],
        ),
        (
            [{"prompt": "What is a prepared version?", "completion": " An immutable tokenized split."}],
            data_pb2.DATASET_SCHEMA_PROMPT_COMPLETION,
            [("user", "What is a prepared version?"), ("assistant", "An immutable tokenized split.")],
        ),
        (
            [{"text": "### Question:\nWhat is LoRA?\n\n### Answer:\nLow-rank adapters."}],
            data_pb2.DATASET_SCHEMA_TEXT,
            [("user", "What is LoRA?"), ("assistant", "Low-rank adapters.")],
        ),
        (
            [
                {
                    "messages": [
                        {"role": "system", "content": "You answer questions about the platform."},
                        {"role": "user", "content": "How do I train?"},
                        {"role": "assistant", "content": "ftctl train create."},
                        {"role": "user", "content": "And then?"},
                        {"role": "assistant", "content": "Evaluate it."},
                    ]
                }
            ],
            data_pb2.DATASET_SCHEMA_MESSAGES,
            [
                ("system", "You answer questions about the platform."),
                ("user", "How do I train?"),
                ("assistant", "ftctl train create."),
                ("user", "And then?"),
                ("assistant", "Evaluate it."),
            ],
        ),
    ],
)
def test_each_schema_is_detected(data_stub, rows, schema, expected):
    dataset = upload(data_stub, jsonl(rows))
    assert dataset.schema == schema
    assert conversations(data_stub, dataset.id) == [expected]


def test_field_mapping_names_the_columns(data_stub):
    data = b"q,a,notes\nWhere are artifacts kept?,In the artifact store.,x\n"
    dataset = upload(data_stub, data, "mapped.csv", field_mapping={"question": "q", "answer": "a"})
    assert dataset.schema == data_pb2.DATASET_SCHEMA_QUESTION_ANSWER
    assert conversations(data_stub, dataset.id) == [
        [("user", "Where are artifacts kept?"), ("assistant", "In the artifact store.")]
    ]


def test_each_validation_rule_rejects_its_row_with_line_and_reason(data_stub):
    lines = [
        json.dumps(QA[0]),  # 1: kept
        '{"question": "broken", "answer": ',  # 2: bad JSON
        json.dumps({"question": "Where is the answer?"}),  # 3: missing field
        json.dumps({"question": "Numbers?", "answer": 42}),  # 4: non-string field
        json.dumps({"question": "Empty?", "answer": "   "}),  # 5: empty answer
        json.dumps(QA[1]),  # 6: kept
    ]
    dataset = upload(data_stub, ("\n".join(lines) + "\n").encode())
    rejected = {(r.line, r.field): r.reason for r in report(data_stub, dataset.id).rejected}
    assert rejected[(2, "")].startswith("bad JSON")
    assert rejected[(3, "answer")] == "missing field"
    assert rejected[(4, "answer")] == "non-string field (got int)"
    assert rejected[(5, "answer")] == "empty answer"
    assert len(rejected) == 4
    assert dataset.counts.rows_kept == 2 and dataset.counts.rows_total == 6
    assert dataset.counts.empty_fields == 2  # the missing answer and the blank one


def test_role_order_and_too_long_rows_are_rejected(data_stub, data_server):
    good = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    rows = [
        good,
        {"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]},
        {"messages": [{"role": "assistant", "content": "first"}, {"role": "user", "content": "then"}]},
        {"messages": [{"role": "user", "content": "q"}, {"role": "bot", "content": "a"}]},
        {"messages": [{"role": "user", "content": "q"}]},
    ]
    too_long = json.dumps({"messages": [{"role": "user", "content": "x" * 1_100_000}]})
    data = jsonl(rows) + too_long.encode() + b"\n"
    dataset = upload(data_stub, data)
    reasons = {r.line: r.reason for r in report(data_stub, dataset.id).rejected}
    assert reasons[2] == "bad role order: two user messages in a row"
    assert reasons[3] == "bad role order: the conversation must start with a user message"
    assert reasons[4] == "bad role order: unknown role 'bot'"
    assert reasons[5] == "bad role order: the last message must be the assistant's answer"
    assert reasons[6].startswith("too long: the row is 1,100,")
    assert dataset.counts.rows_kept == 1


def test_exact_and_near_duplicates_are_reported(data_stub):
    base = "The trainer service runs LoRA fine-tuning jobs on a worker and stores checkpoints in the artifact store."
    rows = [
        {"question": "What does the trainer do?", "answer": base},
        {"question": "what does the TRAINER do", "answer": base.upper()},  # exact after normalisation
        {"question": "What does the trainer do?", "answer": base.replace("stores", "keeps")},  # near
        {"question": "How are datasets split?", "answer": "By seed, with duplicates kept in one split."},
    ]
    dataset = upload(data_stub, jsonl(rows))
    groups = report(data_stub, dataset.id).duplicates
    exact = [list(g.lines) for g in groups if g.exact]
    near = [(list(g.lines), g.similarity) for g in groups if not g.exact]
    assert exact == [[1, 2]]
    assert len(near) == 1 and near[0][0] == [1, 3] and 0.7 <= near[0][1] < 1.0
    assert dataset.counts.exact_duplicates == 1 and dataset.counts.near_duplicates == 1
    assert dataset.counts.rows_kept == 4  # duplicates are reported, not dropped


def test_pii_is_found_and_optionally_redacted(data_stub):
    rows = [
        {"question": "Who do I mail?", "answer": "Write to ops@example.com or call +1 415-555-0134."},
        {"question": "Which key?", "answer": "Use sk-abcdefghijklmnopqrstuvwx1234 and AKIAABCDEFGHIJKLMNOP."},
        {"question": "Token?", "answer": "ghp_" + "a1" * 18},
    ]
    found = upload(data_stub, jsonl(rows))
    findings = sorted((p.line, p.kind, p.field, p.redacted) for p in report(data_stub, found.id).pii)
    assert findings == [
        (1, "email", "answer", False),
        (1, "phone", "answer", False),
        (2, "api_key", "answer", False),
        (2, "api_key", "answer", False),
        (3, "api_key", "answer", False),
    ]
    assert "ops@example.com" in conversations(data_stub, found.id)[0][1][1]
    redacted = upload(data_stub, jsonl(rows), redact_pii=True)
    answers = [c[1][1] for c in conversations(data_stub, redacted.id)]
    assert answers == ["Write to [EMAIL] or call [PHONE].", "Use [API_KEY] and [API_KEY].", "[API_KEY]"]
    assert all(p.redacted for p in report(data_stub, redacted.id).pii)


def test_register_reads_a_file_under_the_allowed_roots(data_stub, data_root: Path):
    path = data_root / "files" / "registered.jsonl"
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(jsonl(qa_rows(3)))
    dataset = data_stub.RegisterDataset(
        data_pb2.RegisterDatasetRequest(source=str(path), options=data_pb2.IngestOptions(name="docs"))
    )
    assert dataset.name == "docs" and dataset.counts.rows_kept == 3


def test_get_list_preview_and_delete(data_stub):
    dataset = upload(data_stub, jsonl(qa_rows(5)), "five.jsonl")
    assert dataset.id in dataset_ids(data_stub)
    preview = data_stub.PreviewDataset(data_pb2.PreviewDatasetRequest(id=dataset.id, offset=3, limit=10))
    assert preview.total == 5 and [r.source_line for r in preview.rows] == [4, 5]
    data_stub.DeleteDataset(data_pb2.DeleteDatasetRequest(id=dataset.id))
    assert dataset.id not in dataset_ids(data_stub)
    import grpc

    with pytest.raises(grpc.RpcError) as err:
        data_stub.GetDataset(data_pb2.GetDatasetRequest(id=dataset.id))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize(
    ("filename", "data"),
    [
        # Excel in locales with a decimal comma writes ";": commas inside the fields stay text.
        (
            "excel.csv",
            b"question;answer\r\nHow do I upload a dataset?;Run ftctl data upload with the file.\r\n"
            b'"How do I prepare it?";Run ftctl data prepare with a base model.\r\n',
        ),
        (
            "export.tsv.csv",
            b"question\tanswer\nHow do I upload a dataset?\tRun ftctl data upload with the file.\n"
            b"How do I prepare it?\tRun ftctl data prepare with a base model.\n",
        ),
    ],
)
def test_csv_delimiter_is_sniffed(data_stub, filename, data):
    dataset = upload(data_stub, data, filename)
    assert dataset.format == data_pb2.DATASET_FORMAT_CSV and dataset.counts.rows_rejected == 0
    assert conversations(data_stub, dataset.id) == EXPECTED_QA


def test_commas_inside_semicolon_fields_stay_text(data_stub):
    data = "question;answer\nWhere, exactly?;Here, and there.\nWho, then?;Me, you, all of us.\n"
    dataset = upload(data_stub, data.encode(), "commas.csv")
    assert conversations(data_stub, dataset.id) == [
        [("user", "Where, exactly?"), ("assistant", "Here, and there.")],
        [("user", "Who, then?"), ("assistant", "Me, you, all of us.")],
    ]


def test_the_csv_extension_wins_over_a_header_starting_with_a_bracket(data_stub):
    data = b"[id],question,answer\n1,How do I upload a dataset?,Run ftctl data upload with the file.\n"
    dataset = upload(data_stub, data, "bracket.csv")
    assert dataset.format == data_pb2.DATASET_FORMAT_CSV and dataset.counts.rows_kept == 1


def test_an_encoding_reads_a_legacy_file(data_stub):
    data = "question,answer\nQu'est-ce qu'un café ?,Une boisson – chaude.\n".encode("cp1252")
    dataset = upload(data_stub, data, "legacy.csv", encoding="cp1252")
    assert conversations(data_stub, dataset.id) == [
        [("user", "Qu'est-ce qu'un café ?"), ("assistant", "Une boisson – chaude.")]
    ]

"""PII at prepare over real gRPC: counted per split, redacted with an allow-list, refused in strict mode."""

import random

import grpc
import pytest
from data_fixtures import jsonl, prepare, qa_rows, report, split_rows, upload
from typer.testing import CliRunner

from finetune.v1 import data_pb2
from ftctl.data import app
from services.data.pii import MAY_CONTAIN, PATTERNS, _may_contain_any, rows_that_may_contain, scan_text
from services.data.splitting import SPLITS

PERSON = "jane.doe@gmail.com"
PERSON_PHONE = "+1 415-555-0134"
PRINTER = "print@company.internal"
ROWS = [
    *qa_rows(16, "pii"),
    {"question": "Who approved the budget?", "answer": f"Jane ({PERSON}, {PERSON_PHONE}) approved it."},
    {"question": "Where do print jobs go?", "answer": f"Mail them to {PRINTER}."},
]
PERSON_LINE, PRINTER_LINE = 17, 18
runner = CliRunner()


@pytest.fixture(scope="module")
def dataset(data_stub) -> data_pb2.Dataset:
    return upload(data_stub, jsonl(ROWS), "people.jsonl")


def prepared(stub, dataset_id: str, pii: data_pb2.PiiOptions | None = None) -> data_pb2.PreparedVersion:
    split = data_pb2.SplitFractions(train=0.5, validation=0.25, test=0.25)
    job = prepare(stub, dataset_id=dataset_id, max_seq_len=128, split=split, pii=pii)
    return stub.GetPreparedVersion(data_pb2.GetPreparedVersionRequest(id=job.prepared_version_id))


def texts(data_root, version: data_pb2.PreparedVersion) -> dict[int, str]:
    return {
        row["source_line"]: " ".join(m["content"] for m in row["messages"])
        for split in SPLITS
        for row in split_rows(data_root, version, split)
    }


def test_prepare_reports_pii_per_split_and_keeps_it_unless_asked(data_stub, data_root, dataset):
    version = prepared(data_stub, dataset.id)
    where = {
        line: split for split, pii in version.split_pii.items() for line in pii.lines
    }  # the split each PII row landed in
    assert where.keys() == {PERSON_LINE, PRINTER_LINE}
    person_split = version.split_pii[where[PERSON_LINE]]
    assert person_split.kinds["email"] == 1 and person_split.kinds["phone"] == 1
    assert sum(p.rows for p in version.split_pii.values()) == 2
    assert sum(p.findings for p in version.split_pii.values()) == 3
    assert all(p.redacted == 0 and p.allowed == 0 for p in version.split_pii.values())
    assert PERSON in texts(data_root, version)[PERSON_LINE]


def test_redact_at_prepare_honours_the_allow_list(data_stub, data_root, dataset):
    pii = data_pb2.PiiOptions(redact=True, allow=["company.internal"])
    version = prepared(data_stub, dataset.id, pii)
    rows = texts(data_root, version)
    assert PERSON not in rows[PERSON_LINE] and PERSON_PHONE not in rows[PERSON_LINE]
    assert "[EMAIL]" in rows[PERSON_LINE] and "[PHONE]" in rows[PERSON_LINE]
    assert PRINTER in rows[PRINTER_LINE]
    assert all(p.rows == 0 and p.findings == 0 for p in version.split_pii.values())
    assert sum(p.redacted for p in version.split_pii.values()) == 2
    assert sum(p.allowed for p in version.split_pii.values()) == 1
    # The options are part of the inputs: a version without them is another version.
    assert version.id != prepared(data_stub, dataset.id).id
    assert version.request.pii.allow == ["company.internal"]


def test_strict_pii_refuses_naming_rows_and_kinds(data_stub, dataset):
    with pytest.raises(grpc.RpcError) as err:
        data_stub.PrepareDataset(
            data_pb2.PrepareDatasetRequest(
                dataset_id=dataset.id,
                base_model="smollm2-135m-instruct",
                pii=data_pb2.PiiOptions(strict=True, allow=[PRINTER]),
            )
        )
    details = err.value.details()
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    for text in (
        "field 'pii.strict'",
        f"line {PERSON_LINE}",
        "in 1 row (1 email, 1 phone)",
        "email at gmail.com in messages[1] (assistant)",
    ):
        assert text in details, details
    assert f"line {PRINTER_LINE}" not in details  # the allowed address is not PII left behind
    # Redacted, nothing is left, so strict mode prepares.
    version = prepared(data_stub, dataset.id, data_pb2.PiiOptions(strict=True, redact=True))
    assert sum(p.findings for p in version.split_pii.values()) == 0


def test_an_allow_list_entry_that_is_no_address_is_named(data_stub, dataset):
    with pytest.raises(grpc.RpcError) as err:
        data_stub.PrepareDataset(
            data_pb2.PrepareDatasetRequest(
                dataset_id=dataset.id,
                base_model="smollm2-135m-instruct",
                pii=data_pb2.PiiOptions(redact=True, allow=["company.internal", "the printer"]),
            )
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "field 'pii.allow[1]'" in err.value.details() and "'the printer'" in err.value.details()


def test_upload_redaction_honours_the_allow_list(data_stub):
    dataset = upload(data_stub, jsonl(ROWS), redact_pii=True, pii_allow=["@company.internal"])
    findings = {(p.line, p.kind, p.redacted, p.allowed) for p in report(data_stub, dataset.id).pii}
    assert findings == {
        (PERSON_LINE, "email", True, False),
        (PERSON_LINE, "phone", True, False),
        (PRINTER_LINE, "email", False, True),
    }
    assert dataset.counts.pii_found == 2 and dataset.counts.pii_allowed == 1


def test_cli_prepare_redacts_refuses_and_shows_pii_per_split(data_server, dataset, monkeypatch):
    monkeypatch.setenv("FT_DATA_ADDRESS", data_server.address)
    base = ["prepare", dataset.id, "--base-model", "smollm2-135m-instruct", "--max-seq-len", "128"]
    refused = runner.invoke(app, [*base, "--strict-pii", "--pii-allow", "company.internal"])
    assert refused.exit_code == 1, refused.output
    assert "INVALID_ARGUMENT" in refused.output and f"line {PERSON_LINE}" in refused.output
    kept = runner.invoke(app, [*base, "--split", "0.5,0.25,0.25"])
    assert kept.exit_code == 0, kept.output
    assert "PII per split" in kept.output and "PII is left in the prepared rows" in kept.output
    redacted = runner.invoke(app, [*base, "--redact-pii", "--pii-allow", "company.internal"])
    assert redacted.exit_code == 0, redacted.output
    assert "PII per split" in redacted.output and "PII is left" not in redacted.output


def test_a_pipeline_file_takes_the_same_options(data_stub, data_server, data_root, tmp_path):
    from ftcommon.settings import ServiceAddresses
    from ftctl.pipeline import PipelineRunner
    from ftctl.pipeline_spec import load_spec

    rows = "".join(f"{r['question']};{r['answer']}\n" for r in ROWS)
    (tmp_path / "people.csv").write_bytes(f"question;answer\n{rows}Café?;Oui.\n".encode("cp1252"))
    (tmp_path / "pipeline.yaml").write_text(
        "name: pii\nbase_model: smollm2-135m-instruct\n"
        "dataset: {path: people.csv, name: people, encoding: cp1252}\n"
        "prepare: {max_seq_len: 128, pii: {redact: true, strict: true, allow: [company.internal]}}\n"
    )
    runner = PipelineRunner(
        load_spec(tmp_path / "pipeline.yaml"),
        tmp_path / "state.json",
        ServiceAddresses(data_address=data_server.address),
    )
    runner.upload()
    runner.prepare()
    version = data_stub.GetPreparedVersion(
        data_pb2.GetPreparedVersionRequest(id=runner.state.prepared_version_id)
    )
    assert version.request.pii == data_pb2.PiiOptions(redact=True, strict=True, allow=["company.internal"])
    # A CSV's rows start on line 2, after its header.
    rows_by_line = texts(data_root, version)
    assert "Café?" in rows_by_line[len(ROWS) + 2] and PRINTER in rows_by_line[PRINTER_LINE + 1]
    assert PERSON not in rows_by_line[PERSON_LINE + 1] and "[EMAIL]" in rows_by_line[PERSON_LINE + 1]


def test_a_database_from_before_gains_the_split_pii_column(tmp_path):
    from datetime import datetime

    from sqlalchemy import Column, MetaData, Table, create_engine, inspect

    from ftcommon.db import Database
    from services.data import tables
    from services.data.catalog import Catalog

    url = f"sqlite:///{tmp_path / 'data.db'}"
    old = MetaData()
    for table in tables.metadata.tables.values():
        columns = [Column(c.name, c.type, primary_key=c.primary_key) for c in table.columns]
        Table(table.name, old, *[c for c in columns if c.name != "split_pii"])
    engine = create_engine(url)
    old.create_all(engine)
    with engine.begin() as conn:
        conn.execute(
            old.tables["prepared_versions"]
            .insert()
            .values(
                id="pv-old",
                dataset_id="ds-old",
                base_model_id="bm",
                request="{}",
                artifact_uri="trees/x",
                artifact_sha256="x",
                artifact_size=1,
                split_stats="{}",
                dropped_too_long=0,
                truncated=0,
                refusal_rows=0,
                tokenizer_sha256="t",
                chat_template_sha256="c",
                created_at=datetime(2026, 1, 1),
            )
        )
    database = Database(url, tables.metadata, tables.MIGRATIONS)
    assert "0002_prepared_version_split_pii" in database.migrate()
    assert "split_pii" in {c["name"] for c in inspect(engine).get_columns("prepared_versions")}
    assert Catalog(database).get_version("pv-old").split_pii == {}


SECRETS = [
    "sk-proj-abcdefghijklmnopqrstuvwxyz0123",
    "AKIAABCDEFGHIJKLMNOP",
    "ghp_" + "a1" * 18,
    "xoxb-1234567890-abcdef",
    "AIza" + "B" * 35,
    PERSON,
    PRINTER,
    PERSON_PHONE,
    "(020) 7946 0958",
    "555.123.4567",
]


@pytest.mark.parametrize("secret", SECRETS)
def test_the_quick_tests_never_skip_a_text_a_pattern_matches(secret):
    """scan_text runs a pattern only where its quick test says it may match: each finding of the patterns
    themselves must pass its kind's test, or the quick test would hide PII."""
    text = f"Call or write: {secret}, thanks."
    found = [
        (kind, start, end)
        for kind, pattern in PATTERNS
        for m in pattern.finditer(text)
        for start, end in [m.span()]
    ]
    assert found, "the sample must hold PII for this test to mean anything"
    for kind, _, _ in found:
        assert MAY_CONTAIN[kind](text), kind
    assert scan_text(text)
    assert scan_text("Lamini runs on 2 GPUs in 2024, version 1.2.3.") == []


@pytest.mark.parametrize("characters", ["ascii", "unicode", "separator"])
def test_the_prefilter_over_all_rows_picks_exactly_the_rows_each_row_s_own_test_picks(characters):
    """rows_that_may_contain searches all rows joined (as bytes, ASCII digits mapped to one): it must pick
    the rows `_may_contain_any` picks, one by one: secrets at a row's start and end (beside the joint), a
    phone's digits split over two rows, "gh" and "_" in different rows, Unicode digits and spaces, texts
    holding the character it joins them with."""
    generator = random.Random(5)
    pieces = [*SECRETS, "555", "-123", "gh", "_", "@", "sk", "-", "AKI", "A", " ", "\0", "word", "12", "3.4"]
    if characters == "unicode":
        pieces += ["\u0663\u0663\u0663-\u0663\u0663\u0663", "\u00e9t\u00e9", "\u2003", "\ud800"]
    if characters == "separator":
        pieces += ["\x01"]
    texts = ["", "gh", "_", *SECRETS]
    texts += ["".join(generator.choices(pieces, k=generator.randint(0, 6))) for _ in range(3000)]
    expected = [index for index, text in enumerate(texts) if _may_contain_any(text)]
    assert 100 < len(expected) < len(texts) - 100, "the rows must be mixed for this test to mean anything"
    assert rows_that_may_contain(texts) == expected
    assert rows_that_may_contain([]) == []

"""GenerateDataset over the real data service: documents in, an ordinary dataset PrepareDataset accepts out."""

import json
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from data_fixtures import data_service_env, dataset_ids, expect_rejected, jsonl, prepare, upload
from document_fixtures import RUNBOOK_HTML, RUNBOOK_MD, blank_pdf_bytes, docx_bytes, pdf_bytes

from finetune.v1 import common_pb2, data_pb2, data_pb2_grpc
from ftcommon.grpc_client import open_channel

TERMINAL = (common_pb2.JOB_STATE_SUCCEEDED, common_pb2.JOB_STATE_FAILED, common_pb2.JOB_STATE_CANCELLED)

GUIDE_DOCX = docx_bytes(
    [
        ("h1", "Operations guide"),
        ("p", "The gateway listens on port 8000 and the data service on port 50051."),
        ("h2", "Restart the gateway"),
        ("p", "Run ftctl stack restart inference; requests in flight finish first."),
    ]
)
BACKUP_PDF = pdf_bytes(
    [
        ["Copy the var folder to the backup share every night at 02:00."],
        ["Restore with ftctl stack restore."],
    ],
    outline=[("Backups", 0), ("Restore", 1)],
)
RESTORE_MD = b"# Backups\n\n## Restore\n\nRestore the var folder with `ftctl stack restore`; it takes about 2 minutes.\n"

BACKUPS_MD = RESTORE_MD.replace(
    b"# Backups\n\n", b"# Backups\n\nCopy the var folder to the share every night.\n\n"
)


def documents(*files: tuple[str, bytes]) -> list[data_pb2.SourceDocument]:
    return [data_pb2.SourceDocument(filename=name, content=content) for name, content in files]


def wait_for_generate(
    stub: data_pb2_grpc.DataServiceStub, job_id: str, timeout: float = 120
) -> data_pb2.GenerateJob:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = stub.GetGenerateJob(data_pb2.GetGenerateJobRequest(id=job_id))
        if job.status.state in TERMINAL:
            return job
        time.sleep(0.1)
    raise AssertionError(f"generate job {job_id} did not finish in {timeout}s")


def raw_rows(data_root: Path, dataset: data_pb2.Dataset) -> list[dict]:
    text = (data_root / "artifacts" / dataset.raw.uri).read_text()
    return [json.loads(line) for line in text.splitlines()]


def test_documents_become_a_dataset_that_prepare_accepts(data_stub, data_root):
    evaluation = upload(
        data_stub,
        jsonl([{"question": "How do I wipe local data in Runbook?", "answer": "Run make clean."}]),
        name="runbook-eval",
    )
    request = data_pb2.GenerateDatasetRequest(
        name="runbook-qa",
        documents=documents(
            ("runbook.md", RUNBOOK_MD.encode()),
            ("runbook.html", RUNBOOK_HTML),
            ("guide.docx", GUIDE_DOCX),
            ("backups.pdf", BACKUP_PDF),
            ("scan.pdf", blank_pdf_bytes()),
            ("broken.docx", b"PK\x03\x04 not a zip"),
        ),
        eval_dataset_ids=[evaluation.id],
    )
    job = wait_for_generate(data_stub, data_stub.GenerateDataset(request).status.id)
    assert job.status.state == common_pb2.JOB_STATE_SUCCEEDED, job.status.error
    report = job.report
    outcomes = {d.name: d for d in report.documents}
    assert outcomes["scan.pdf"].rejected.startswith("the PDF's 1 page(s) hold no text")
    assert outcomes["broken.docx"].rejected.startswith("not a readable DOCX file")
    assert outcomes["runbook.md"].chunks == 3 and not outcomes["runbook.md"].rejected
    assert report.rejected_by_reason["eval_contamination"] == 1 and report.eval_questions == 1
    assert report.pairs_kept == sum(c.kept for c in report.chunks) > 10
    assert report.pairs_generated == report.pairs_kept + sum(report.rejected_by_reason.values())
    assert report.sample_kept and all(0.7 <= p.grounding <= 1 for p in report.sample_kept)
    assert {c.document for c in report.chunks} == {"runbook.md", "runbook.html", "guide.docx", "backups.pdf"}

    dataset = data_stub.GetDataset(data_pb2.GetDatasetRequest(id=job.dataset_id))
    assert dataset.name == "runbook-qa" and dataset.schema == data_pb2.DATASET_SCHEMA_QUESTION_ANSWER
    assert dataset.counts.rows_kept == report.pairs_kept
    rows = raw_rows(data_root, dataset)
    assert all(row["fact_id"].startswith("fact-") and row["document"] and row["location"] for row in rows)
    assert "How do I wipe local data in Runbook?" not in {row["question"] for row in rows}
    by_fact: dict[str, set[str]] = {}
    for row in rows:
        by_fact.setdefault(row["fact_id"], set()).add(row["question"])
    assert max(len(questions) for questions in by_fact.values()) == 3  # several phrasings per fact
    full = json.loads((data_root / "artifacts" / report.report.uri).read_text())
    assert full["lineage"]["generator"] is None and full["lineage"]["settings"]["chunk_max_chars"] == 1500
    assert {d["name"] for d in full["lineage"]["documents"]} == set(outcomes)

    version = prepare(data_stub, dataset_id=dataset.id, max_seq_len=256)
    prepared = data_stub.GetPreparedVersion(
        data_pb2.GetPreparedVersionRequest(id=version.prepared_version_id)
    )
    # The rows carry their fact ids to prepare, which splits each fact's phrasings between train and test.
    assert any(warning.startswith("split by phrasing within a fact") for warning in prepared.warnings)


def test_documents_by_path_under_the_allowed_roots(data_stub, data_root):
    folder = data_root / "docs-by-path"
    folder.mkdir(exist_ok=True)
    (folder / "guide.docx").write_bytes(GUIDE_DOCX)
    request = data_pb2.GenerateDatasetRequest(sources=[str(folder / "guide.docx")], chunk_max_chars=400)
    job = wait_for_generate(data_stub, data_stub.GenerateDataset(request).status.id)
    assert job.status.state == common_pb2.JOB_STATE_SUCCEEDED, job.status.error
    assert [d.name for d in job.report.documents] == ["guide.docx"]


@pytest.mark.parametrize(
    ("fields", "mentions"),
    [
        ({}, ["documents", "at least one document"]),
        ({"chunk_max_chars": 0}, ["chunk_max_chars", "greater than 0"]),
        ({"chunk_overlap_chars": 900}, ["chunk_overlap_chars"]),
        ({"phrasings_per_fact": 9}, ["phrasings_per_fact"]),
        ({"min_grounding": 1.5}, ["min_grounding"]),
        ({"generator": "no-such-model"}, ["generator", "no-such-model"]),
        (
            {"question_styles": ["poetic"], "generator": "smollm2-135m-instruct"},
            ["question_styles", "paraphrase"],
        ),
        ({"sources": ["/etc/hostname"]}, ["sources[0]"]),
    ],
)
def test_bad_requests_name_the_field_and_store_nothing(data_stub, data_root, fields, mentions):
    if fields:
        fields = {"documents": documents(("runbook.md", RUNBOOK_MD.encode())), **fields}
        if "sources" in fields:
            del fields["documents"]
    expect_rejected(
        data_stub,
        data_root,
        lambda: data_stub.GenerateDataset(data_pb2.GenerateDatasetRequest(**fields)),
        mentions=mentions,
    )


def test_document_type_and_size_are_checked_per_document(data_stub, data_root):
    request = data_pb2.GenerateDatasetRequest(
        documents=documents(("runbook.md", RUNBOOK_MD.encode()), ("table.xlsx", b"PK"))
    )
    expect_rejected(
        data_stub,
        data_root,
        lambda: data_stub.GenerateDataset(request),
        mentions=["documents[1]", "table.xlsx"],
    )
    huge = b"# Huge\n\n" + b"word " * (4 * 1024 * 1024 + 1)  # just over the 20 MiB default limit
    oversize = data_pb2.GenerateDatasetRequest(
        documents=documents(("runbook.md", RUNBOOK_MD.encode()), ("huge.md", huge))
    )
    expect_rejected(
        data_stub,
        data_root,
        lambda: data_stub.GenerateDataset(oversize),
        mentions=["documents[1]", "'huge.md' is 20,971,", "over the limit of 20,971,520"],
    )


def test_unknown_evaluation_set_is_not_found(data_stub):
    request = data_pb2.GenerateDatasetRequest(
        documents=documents(("runbook.md", RUNBOOK_MD.encode())), eval_dataset_ids=["ds_missing"]
    )
    with pytest.raises(grpc.RpcError) as caught:
        data_stub.GenerateDataset(request)
    assert (
        caught.value.code() == grpc.StatusCode.NOT_FOUND and "eval_dataset_ids[0]" in caught.value.details()
    )


def test_a_job_whose_documents_all_fail_registers_nothing(data_stub):
    before = dataset_ids(data_stub)
    request = data_pb2.GenerateDatasetRequest(
        documents=documents(("scan.pdf", blank_pdf_bytes()), ("empty.html", b"<html><body></body></html>"))
    )
    job = wait_for_generate(data_stub, data_stub.GenerateDataset(request).status.id)
    assert job.status.state == common_pb2.JOB_STATE_FAILED
    assert job.status.error.startswith(
        "no document could be read: scan.pdf: the PDF's 1 page(s) hold no text"
    )
    assert "empty.html: the document has no text" in job.status.error
    assert dataset_ids(data_stub) == before and not job.dataset_id


@pytest.fixture(scope="module")
def generating_data_stub(data_root, trainer_server, inference_server, tmp_path_factory) -> Iterator:
    """A data service of its own (its own database, the shared artifact store) that reaches the gateway."""
    from services.data.config import DataSettings
    from services.data.server import build_server

    folder = tmp_path_factory.mktemp("generating-data")
    settings = DataSettings(
        data_dir=folder,
        database_url=f"sqlite:///{folder / 'data.db'}",
        artifact_store_url=str(data_root / "artifacts"),
        port=0,
        trainer_address=trainer_server.address,
        inference_address=inference_server.grpc_address,
        generator_timeout_seconds=180,
        job_poll_seconds=0.1,
    )
    server = build_server(settings)
    with open_channel(server.address) as channel:
        yield data_pb2_grpc.DataServiceStub(channel)
    server.stop(grace=1)


@pytest.mark.slow
def test_generation_with_the_default_model_yields_a_dataset_prepare_accepts(generating_data_stub):
    stub = generating_data_stub
    request = data_pb2.GenerateDatasetRequest(
        name="runbook-model-qa",
        documents=documents(("restore.md", RESTORE_MD)),
        generator="smollm2-135m-instruct",
        question_styles=["factual"],
        model_attempts=1,
        model_max_tokens=64,
    )
    job = wait_for_generate(stub, stub.GenerateDataset(request).status.id, timeout=240)
    assert job.status.state == common_pb2.JOB_STATE_SUCCEEDED, job.status.error
    report = job.report
    assert report.generator_model_id
    # One chunk asked the model once: the reply is a pair, malformed, or a call that failed; never a crash.
    [chunk] = report.chunks
    assert chunk.model_pairs + chunk.model_malformed + chunk.model_failed_calls == 1
    assert chunk.structural_pairs == 3 and report.pairs_kept >= 3  # the structural floor stands
    version = prepare(stub, dataset_id=job.dataset_id, max_seq_len=256)
    assert version.prepared_version_id


def test_cli_generates_from_a_folder_and_prints_the_report(data_server, monkeypatch, tmp_path):
    from typer.testing import CliRunner

    from ftctl.data import app

    monkeypatch.setenv("FT_DATA_ADDRESS", data_server.address)
    (tmp_path / "runbook.md").write_text(RUNBOOK_MD)
    (tmp_path / "nested").mkdir()
    (tmp_path / "nested" / "guide.docx").write_bytes(GUIDE_DOCX)
    (tmp_path / "nested" / "notes.xlsx").write_bytes(b"PK")  # not a document: a folder skips it
    result = CliRunner().invoke(app, ["generate", str(tmp_path), "--name", "cli-docs", "--phrasings", "2"])
    assert result.exit_code == 0, result.output
    assert "runbook.md" in result.stdout and "guide.docx" in result.stdout
    assert "pairs kept" in result.stdout and "sample of kept pairs" in result.stdout
    assert "next: ftctl data prepare ds" in result.stdout

    bad = CliRunner().invoke(app, ["generate", str(tmp_path / "runbook.md"), "--chunk-max-chars", "0"])
    # The spec refuses it before anything is sent, naming the field.
    assert bad.exit_code == 2 and "chunk_max_chars" in bad.stderr


@pytest.mark.slow
def test_kill_during_generation_then_restart(trainer_server, inference_server, data_root, tmp_path):
    """kill -9 between two chunks' generator calls: the job is requeued and runs again from its stored
    documents; it ends with one dataset or none, never a half one."""
    import signal
    import sqlite3

    from test_data_kill import start_service

    env = data_service_env(
        tmp_path, data_root, trainer_server.address, "generate_jobs", inference_server.grpc_address
    )
    log = tmp_path / "service.log"
    service = start_service(env, log)
    request = data_pb2.GenerateDatasetRequest(
        documents=documents(("backups.md", BACKUPS_MD)),
        generator="smollm2-135m-instruct",
        question_styles=["factual"],
        model_attempts=1,
        model_max_tokens=16,
    )
    try:
        with open_channel(f"127.0.0.1:{env['FT_DATA_PORT']}") as channel:
            stub = data_pb2_grpc.DataServiceStub(channel)
            job = stub.GenerateDataset(request)
            for event in stub.WatchGenerateJob(common_pb2.WatchRequest(id=job.status.id), timeout=240):
                if event.kind == common_pb2.EVENT_KIND_PROGRESS and event.message.startswith("chunk 1/2"):
                    break
        service.send_signal(signal.SIGKILL)
        service.wait(10)
        with sqlite3.connect(tmp_path / "data.db") as db:
            assert db.execute("select state from generate_jobs").fetchall() == [
                (common_pb2.JOB_STATE_RUNNING,)
            ]
            assert db.execute("select count(*) from datasets").fetchone() == (0,)

        service = start_service(env, log)
        with open_channel(f"127.0.0.1:{env['FT_DATA_PORT']}") as channel:
            stub = data_pb2_grpc.DataServiceStub(channel)
            done = wait_for_generate(stub, job.status.id, timeout=240)
            datasets = dataset_ids(stub)
            if done.status.state == common_pb2.JOB_STATE_SUCCEEDED:
                assert done.status.attempt == 2 and datasets == {done.dataset_id}
                assert len(done.report.chunks) == 2
            else:
                assert done.status.state == common_pb2.JOB_STATE_FAILED and datasets == set()
    finally:
        service.kill()
        service.wait(10)


def test_a_pipeline_file_generates_its_dataset_from_documents(data_server, data_stub, tmp_path):
    from ftcommon.settings import ServiceAddresses
    from ftcommon.specs.prepare import RefusalOptions
    from ftctl.pipeline import PipelineRunner, generate_request
    from ftctl.pipeline_spec import PipelineSpecError, load_spec

    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "runbook.md").write_text(RUNBOOK_MD)
    (tmp_path / "docs" / "guide.docx").write_bytes(GUIDE_DOCX)
    pipeline = tmp_path / "pipeline.yaml"
    pipeline.write_text(
        "name: docs-bot\nbase_model: smollm2-135m-instruct\n"
        "documents:\n  paths: [docs]\n  name: docs-qa\n  generate: {chunk_max_chars: 800, phrasings_per_fact: 2}\n"
        "prepare: {max_seq_len: 256}\n"
    )
    spec = load_spec(pipeline)
    request = generate_request(spec)
    assert [d.filename for d in request.documents] == ["guide.docx", "runbook.md"]
    assert (request.name, request.chunk_max_chars, request.phrasings_per_fact) == ("docs-qa", 800, 2)
    assert not request.HasField("min_grounding")  # left to the spec's default on the server
    assert request.refusal_text == ""
    # Answers are checked against the refusal the model will be taught, unless the section names another.
    taught = spec.model_copy(
        update={
            "prepare": spec.prepare.model_copy(update={"refusals": RefusalOptions(refusal_text="Ask HR.")})
        }
    )
    assert generate_request(taught).refusal_text == "Ask HR."

    runner = PipelineRunner(spec, tmp_path / "state.json", ServiceAddresses(data_address=data_server.address))
    runner._forget_outdated_steps()
    runner.upload()
    dataset = data_stub.GetDataset(data_pb2.GetDatasetRequest(id=runner.state.dataset_id))
    assert dataset.name == "docs-qa" and dataset.counts.rows_kept > 0

    for text, mentions in (
        (
            pipeline.read_text().replace("documents:", "dataset: {path: x.jsonl, name: x}\ndocuments:"),
            "either",
        ),
        (pipeline.read_text().replace("generate: {", "generate: {name: mine, "), "set by the pipeline"),
    ):
        pipeline.write_text(text)
        with pytest.raises(PipelineSpecError, match=mentions):
            load_spec(pipeline)


def test_a_job_run_again_after_registering_keeps_one_dataset(tmp_path):
    """A worker killed between registering the dataset and closing the job: the retry finds the dataset
    under the id the job names, instead of registering a second copy."""
    import threading

    from ftcommon.artifacts import ArtifactStore
    from ftcommon.db import Database
    from ftcommon.job_runtime import JobContext
    from ftcommon.jobs import JobStore
    from services.data import tables
    from services.data.base_models import BaseModels
    from services.data.catalog import Catalog
    from services.data.config import DataSettings
    from services.data.generate_jobs import GenerateJobs

    settings = DataSettings(data_dir=tmp_path, trainer_address="127.0.0.1:1")
    db = Database(settings.resolved_database_url("data"), tables.metadata, tables.MIGRATIONS)
    db.migrate()
    store = ArtifactStore(settings.resolved_artifact_store_url())
    catalog = Catalog(db)
    jobs = JobStore(db, tables.generate_jobs, tables.generate_job_events, id_prefix="gen")
    base_models = BaseModels(settings.trainer_address, 1.0, store, settings.security)
    generation = GenerateJobs(settings, store, catalog, jobs, base_models)
    job = generation.create(
        data_pb2.GenerateDatasetRequest(
            name="runbook-qa", documents=documents(("runbook.md", RUNBOOK_MD.encode()))
        )
    )
    first = generation.run(JobContext(jobs, job, threading.Event()))
    again = generation.run(JobContext(jobs, job, threading.Event()))
    assert first.result["dataset_id"] == again.result["dataset_id"]
    assert [d.id for d in catalog.list_datasets(0, 10)] == [first.result["dataset_id"]]

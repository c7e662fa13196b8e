"""EvalService as a durable job service, without generating: validation, listing, cancel, recovery.
The registry and the data service are real (CreateRun checks the models and the data before queuing);
nothing listens where the gateway would be."""

import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from data_fixtures import jsonl, qa_rows, upload

from finetune.v1 import common_pb2, eval_pb2, eval_pb2_grpc
from ftcommon.db import Database
from ftcommon.grpc_client import open_channel
from ftcommon.jobs import JobState, JobStore
from services.eval import tables
from services.eval.config import EvalSettings
from services.eval.server import EvalServer, build_server
from services.trainer.config import DEFAULT_BASE_MODEL_NAME

# Nothing listens here: these tests never reach a model.
NOWHERE = "127.0.0.1:9"
PEERS: dict[str, str] = {}


@pytest.fixture(scope="module", autouse=True)
def peers(trainer_server, data_server, data_stub) -> None:
    """The session's registry and data service, and one small dataset the runs name."""
    PEERS.update(
        trainer=trainer_server.address,
        data=data_server.address,
        dataset=upload(data_stub, jsonl(qa_rows(3)), "eval-jobs.jsonl").id,
    )


def _settings(data_dir: Path, **overrides: object) -> EvalSettings:
    values: dict[str, object] = {
        "data_dir": data_dir,
        "port": 0,
        "inference_address": NOWHERE,
        "data_address": PEERS["data"],
        "trainer_address": PEERS["trainer"],
        "worker_enabled": False,
        "poll_seconds": 0.05,
    }
    values.update(overrides)
    return EvalSettings(**values)


@pytest.fixture()
def idle_server(tmp_path: Path) -> Iterator[EvalServer]:
    server = build_server(_settings(tmp_path))
    yield server
    server.stop(grace=0)


def _stub(server: EvalServer) -> eval_pb2_grpc.EvalServiceStub:
    return eval_pb2_grpc.EvalServiceStub(open_channel(server.address, 10))


def _request(**fields: object) -> eval_pb2.CreateRunRequest:
    values: dict[str, object] = {
        "models": [DEFAULT_BASE_MODEL_NAME, DEFAULT_BASE_MODEL_NAME],
        "data": eval_pb2.EvalData(dataset_id=PEERS["dataset"]),
    }
    values.update(fields)
    return eval_pb2.CreateRunRequest(**values)


@pytest.mark.parametrize(
    ("fields", "field_name"),
    [
        ({"models": []}, "models"),
        ({"metrics": ["accuracy"]}, "metrics"),
        ({"max_examples": -1}, "max_examples"),
        ({"data": eval_pb2.EvalData()}, "data"),
        ({"data": eval_pb2.EvalData(prepared_version_id="pv", split="dev")}, "data.split"),
        ({"benchmarks": [eval_pb2.BenchmarkSpec(name="hellaswag", path="/")]}, "benchmarks[0].name"),
        ({"benchmarks": [eval_pb2.BenchmarkSpec(name="mmlu", path="/no/such/dir")]}, "benchmarks[0].path"),
    ],
)
def test_create_run_rejects_bad_input(idle_server: EvalServer, fields: dict, field_name: str) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        _stub(idle_server).CreateRun(_request(**fields))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"field '{field_name}'" in caught.value.details()


def test_runs_are_listed_fetched_and_cancelled(idle_server: EvalServer) -> None:
    stub = _stub(idle_server)
    first = stub.CreateRun(_request(idempotency_key="k-1"))
    again = stub.CreateRun(_request(idempotency_key="k-1"))
    second = stub.CreateRun(_request(max_examples=5))
    assert first.status.id == again.status.id
    assert first.status.state == common_pb2.JOB_STATE_QUEUED
    assert (
        list(stub.GetRun(eval_pb2.GetRunRequest(id=second.status.id)).request.models)
        == [DEFAULT_BASE_MODEL_NAME] * 2
    )
    listed = stub.ListRuns(eval_pb2.ListRunsRequest(page=common_pb2.PageRequest(page_size=1)))
    assert len(listed.runs) == 1 and listed.next_page_token
    cancelled = stub.CancelRun(eval_pb2.GetRunRequest(id=first.status.id))
    assert cancelled.status.state == common_pb2.JOB_STATE_CANCELLED
    events = list(stub.WatchRun(common_pb2.WatchRequest(id=first.status.id), timeout=10))
    assert [e.state for e in events if e.kind == common_pb2.EVENT_KIND_STATE][
        -1
    ] == common_pb2.JOB_STATE_CANCELLED
    with pytest.raises(grpc.RpcError) as caught:
        stub.GetReport(eval_pb2.GetRunRequest(id=first.status.id))
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    with pytest.raises(grpc.RpcError) as missing:
        stub.GetRun(eval_pb2.GetRunRequest(id="eval-nope"))
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND


def test_run_of_a_dead_worker_is_requeued_then_failed_not_stuck(tmp_path: Path) -> None:
    """A run left `running` by a killed process goes back to the queue; past max_attempts it fails."""
    first = build_server(_settings(tmp_path))
    run_id = _stub(first).CreateRun(_request()).status.id
    first.stop(grace=0)

    settings = _settings(tmp_path)
    db = Database(settings.resolved_database_url("eval"), tables.metadata, tables.MIGRATIONS)
    store = JobStore(db, tables.jobs, tables.job_events, id_prefix="eval")
    # Two workers claimed it and died (no heartbeat since).
    assert store.claim("dead-worker-1", kind="eval")
    store.transition(run_id, JobState.QUEUED, message="worker lost; requeued")
    assert store.claim("dead-worker-2", kind="eval").attempt == 2

    restarted = build_server(
        _settings(tmp_path, worker_enabled=True, stale_after_seconds=0.2, max_attempts=2)
    )
    try:
        deadline = time.monotonic() + 20
        while store.get(run_id).state == JobState.RUNNING and time.monotonic() < deadline:
            time.sleep(0.1)
        job = store.get(run_id)
        assert job.state == JobState.FAILED, job
        assert "gave up" in job.error
        messages = [e.message for e in store.events_after(run_id, 0)]
        assert "worker lost; requeued" in messages
    finally:
        restarted.stop(grace=0)
        db.dispose()

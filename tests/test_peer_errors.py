"""Validation at the door and errors from peers: CreateRun checks its models and data before queuing,
a failed call to another service reads as one clear line (never a grpc repr), CreateJob names the field of
an unknown base model, and an upload longer than declared says so."""

import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from data_fixtures import dataset_ids, jsonl, qa_rows, upload, upload_requests

from finetune.v1 import common_pb2, eval_pb2, eval_pb2_grpc, trainer_pb2
from ftcommon.grpc_client import open_channel
from services.eval.config import EvalSettings
from services.trainer.config import DEFAULT_BASE_MODEL_NAME

NOWHERE = "127.0.0.1:9"  # nothing listens here
REPR_MARKERS = ("_InactiveRpcError", "debug_error_string", "<", "Traceback")


def _eval_server(data_dir: Path, **addresses: object) -> object:
    from services.eval.server import build_server

    values: dict[str, object] = {
        "data_dir": data_dir,
        "port": 0,
        "inference_address": NOWHERE,
        "worker_enabled": False,
        **addresses,
    }
    return build_server(EvalSettings(**values))


@pytest.fixture(scope="module")
def dataset_id(data_stub) -> str:
    return upload(data_stub, jsonl(qa_rows(3, prefix="peer")), "peer-errors.jsonl").id


@pytest.fixture()
def evaluator(tmp_path, trainer_server, data_server) -> Iterator[eval_pb2_grpc.EvalServiceStub]:
    server = _eval_server(tmp_path, trainer_address=trainer_server.address, data_address=data_server.address)
    with open_channel(server.address, 20) as channel:
        yield eval_pb2_grpc.EvalServiceStub(channel)
    server.stop(grace=0)


@pytest.mark.parametrize(
    ("fields", "field_name", "named"),
    [
        ({"models": [DEFAULT_BASE_MODEL_NAME, "no-such-model"]}, "models", "no-such-model"),
        ({"judge_model": "no-such-judge"}, "judge_model", "no-such-judge"),
        (
            {"data": eval_pb2.EvalData(prepared_version_id="pv-missing")},
            "data.prepared_version_id",
            "pv-missing",
        ),
        ({"data": eval_pb2.EvalData(dataset_id="ds-missing")}, "data.dataset_id", "ds-missing"),
    ],
)
def test_create_run_checks_models_and_data_before_queuing(evaluator, dataset_id, fields, field_name, named):
    request = eval_pb2.CreateRunRequest(
        models=[DEFAULT_BASE_MODEL_NAME], data=eval_pb2.EvalData(dataset_id=dataset_id)
    )
    for name, value in fields.items():
        if isinstance(value, list):
            getattr(request, name)[:] = value
        elif isinstance(value, str):
            setattr(request, name, value)
        else:
            getattr(request, name).CopyFrom(value)
    with pytest.raises(grpc.RpcError) as err:
        evaluator.CreateRun(request)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"field '{field_name}'" in err.value.details() and named in err.value.details()
    assert not evaluator.ListRuns(eval_pb2.ListRunsRequest()).runs


def test_an_unreachable_peer_is_named_in_one_line(tmp_path, trainer_server):
    server = _eval_server(tmp_path, trainer_address=trainer_server.address, data_address=NOWHERE)
    try:
        with open_channel(server.address, 30) as channel:
            stub = eval_pb2_grpc.EvalServiceStub(channel)
            with pytest.raises(grpc.RpcError) as err:
                stub.CreateRun(
                    eval_pb2.CreateRunRequest(
                        models=[DEFAULT_BASE_MODEL_NAME], data=eval_pb2.EvalData(dataset_id="ds-any")
                    )
                )
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
            details = err.value.details()
            assert f"the data service at {NOWHERE} failed: UNAVAILABLE" in details
            assert "\n" not in details and not any(marker in details for marker in REPR_MARKERS)
            assert not stub.ListRuns(eval_pb2.ListRunsRequest()).runs
    finally:
        server.stop(grace=0)


def test_a_run_failed_by_a_peer_records_one_clear_line(tmp_path, trainer_server, data_server, dataset_id):
    """The gateway is unreachable: the run fails with the peer's status, not the grpc error's repr."""
    server = _eval_server(
        tmp_path,
        trainer_address=trainer_server.address,
        data_address=data_server.address,
        worker_enabled=True,
    )
    try:
        with open_channel(server.address, 30) as channel:
            stub = eval_pb2_grpc.EvalServiceStub(channel)
            run = stub.CreateRun(
                eval_pb2.CreateRunRequest(
                    models=[DEFAULT_BASE_MODEL_NAME],
                    data=eval_pb2.EvalData(dataset_id=dataset_id),
                    metrics=["exact_match"],
                )
            )
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                status = stub.GetRun(eval_pb2.GetRunRequest(id=run.status.id)).status
                if status.state == common_pb2.JOB_STATE_FAILED:
                    break
                time.sleep(0.2)
            assert status.state == common_pb2.JOB_STATE_FAILED, status
            assert "a call to another service failed: UNAVAILABLE" in status.error
            assert "\n" not in status.error and not any(marker in status.error for marker in REPR_MARKERS)
    finally:
        server.stop(grace=0)


def test_create_job_names_base_model_for_an_unknown_model(trainer_stub):
    with pytest.raises(grpc.RpcError) as err:
        trainer_stub.CreateJob(
            trainer_pb2.CreateJobRequest(base_model="no-such-base", prepared_version_id="pv-any")
        )
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert "field 'base_model'" in err.value.details() and "no-such-base" in err.value.details()


def test_an_upload_longer_than_declared_says_so(data_stub):
    data = jsonl(qa_rows(3, prefix="longer"))
    before = dataset_ids(data_stub)

    def longer() -> Iterator[object]:
        first, *rest = upload_requests(data, "longer.jsonl")
        first.metadata.size_bytes = len(data) - 10
        first.metadata.sha256 = ""
        yield first
        yield from rest

    with pytest.raises(grpc.RpcError) as err:
        data_stub.UploadDataset(longer())
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "field 'size_bytes'" in err.value.details() and "longer than declared" in err.value.details()
    assert dataset_ids(data_stub) == before

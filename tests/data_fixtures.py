"""Helpers the data-service tests share: uploading bytes, snapshots of what is stored, waiting for jobs,
the environment of a data service run as its own process."""

import hashlib
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import grpc

from finetune.v1 import common_pb2, data_pb2, data_pb2_grpc

CHUNK = 64 * 1024
# Job timings for a data service a test kills: a killed worker's job is requeued about 2 s later.
_FAST_JOB_SETTINGS = {"HEARTBEAT_SECONDS": "0.5", "STALE_AFTER_SECONDS": "2", "POLL_SECONDS": "0.2"}


def jsonl(rows: list[object]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def qa_rows(count: int, prefix: str = "row") -> list[dict[str, str]]:
    return [
        {
            "question": f"What does {prefix} number {i} of the platform docs cover?",
            "answer": f"It covers topic {i}.",
        }
        for i in range(count)
    ]


def upload_requests(data: bytes, filename: str, **options: object) -> Iterator[data_pb2.UploadDatasetRequest]:
    metadata = data_pb2.UploadMetadata(
        options=data_pb2.IngestOptions(**options),
        filename=filename,
        size_bytes=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
    )
    yield data_pb2.UploadDatasetRequest(metadata=metadata)
    for start in range(0, len(data), CHUNK):
        yield data_pb2.UploadDatasetRequest(chunk=data[start : start + CHUNK])


def upload(
    stub: data_pb2_grpc.DataServiceStub, data: bytes, filename: str = "data.jsonl", **options: object
) -> data_pb2.Dataset:
    return stub.UploadDataset(upload_requests(data, filename, **options), timeout=120)


def report(stub: data_pb2_grpc.DataServiceStub, dataset_id: str) -> data_pb2.ValidationReport:
    return stub.GetValidationReport(data_pb2.GetDatasetRequest(id=dataset_id))


def dataset_ids(stub: data_pb2_grpc.DataServiceStub) -> set[str]:
    ids: set[str] = set()
    token = ""
    while True:
        page = stub.ListDatasets(
            data_pb2.ListDatasetsRequest(page=common_pb2.PageRequest(page_size=500, page_token=token))
        )
        ids.update(d.id for d in page.datasets)
        token = page.next_page_token
        if not token:
            return ids


def stored_artifacts(data_root: Path) -> set[str]:
    """Every published blob and tree in the shared artifact store."""
    root = data_root / "artifacts"
    return {p.relative_to(root).as_posix() for kind in ("blobs", "trees") for p in (root / kind).glob("*")}


def expect_rejected(
    stub: data_pb2_grpc.DataServiceStub, data_root: Path, call: object, *, mentions: list[str]
) -> grpc.RpcError:
    """Runs `call`, asserts INVALID_ARGUMENT whose details mention every string, and that nothing was stored."""
    before_ids, before_artifacts = dataset_ids(stub), stored_artifacts(data_root)
    try:
        call()  # type: ignore[operator]
    except grpc.RpcError as err:
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err.details()
        for text in mentions:
            assert text in err.details(), f"{text!r} not in {err.details()!r}"
        assert dataset_ids(stub) == before_ids
        assert stored_artifacts(data_root) == before_artifacts
        return err
    raise AssertionError("the call was accepted")


def wait_for_job(
    stub: data_pb2_grpc.DataServiceStub, job_id: str, timeout: float = 120
) -> data_pb2.PrepareJob:
    deadline = time.monotonic() + timeout
    terminal = (common_pb2.JOB_STATE_SUCCEEDED, common_pb2.JOB_STATE_FAILED, common_pb2.JOB_STATE_CANCELLED)
    while time.monotonic() < deadline:
        job = stub.GetPrepareJob(data_pb2.GetPrepareJobRequest(id=job_id))
        if job.status.state in terminal:
            return job
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} did not finish in {timeout}s")


def prepare(stub: data_pb2_grpc.DataServiceStub, **fields: object) -> data_pb2.PrepareJob:
    """Runs a prepare to the end and asserts it succeeded."""
    fields.setdefault("base_model", "smollm2-135m-instruct")
    job = stub.PrepareDataset(data_pb2.PrepareDatasetRequest(**fields))
    done = wait_for_job(stub, job.status.id)
    assert done.status.state == common_pb2.JOB_STATE_SUCCEEDED, done.status.error
    return done


def prepared_qa_version(
    stub: data_pb2_grpc.DataServiceStub,
    folder: Path,
    name: str,
    pairs: list[tuple[str, str]],
    split: data_pb2.SplitFractions,
    seed: int,
) -> str:
    """Registers question/answer pairs as a dataset and prepares them for the default model (max 128 tokens)."""
    source = folder / f"{name}.jsonl"
    source.write_text("".join(json.dumps({"question": q, "answer": a}) + "\n" for q, a in pairs))
    dataset = stub.RegisterDataset(
        data_pb2.RegisterDatasetRequest(options=data_pb2.IngestOptions(name=name), source=str(source))
    )
    return prepare(stub, dataset_id=dataset.id, max_seq_len=128, split=split, seed=seed).prepared_version_id


def split_rows(data_root: Path, version: data_pb2.PreparedVersion, split: str) -> list[dict]:
    path = data_root / "artifacts" / version.artifact.uri / f"{split}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def data_service_env(
    data_dir: Path,
    data_root: Path,
    trainer_address: str,
    jobs: Literal["jobs", "generate_jobs"] = "jobs",
    inference_address: str | None = None,
) -> dict[str, str]:
    """The environment of a data service run as its own process (test_data_kill.start_service), so a test
    can kill it: this process's environment plus its own data dir and database, the shared artifact store
    (where the trainer keeps the base model), a free port (FT_DATA_PORT), and fast timings for the job
    runtime `jobs` (prepare's "jobs" or "generate_jobs"). With an inference address the generator gets one
    call at a time, so a kill after the first answer lands in the middle of the generation."""
    env = {
        **os.environ,
        "FT_DATA_DATA_DIR": str(data_dir),
        "FT_DATA_ARTIFACT_STORE_URL": str(data_root / "artifacts"),
        "FT_DATA_PORT": str(free_port()),
        "FT_DATA_TRAINER_ADDRESS": trainer_address,
    }
    env |= {f"FT_DATA_{jobs.upper()}__{name}": value for name, value in _FAST_JOB_SETTINGS.items()}
    if inference_address is not None:
        env |= {"FT_DATA_INFERENCE_ADDRESS": inference_address, "FT_DATA_GENERATOR_CONCURRENCY": "1"}
    return env

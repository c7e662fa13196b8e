"""Killing the data service in the middle of a prepare: no half version, and the job never stays running."""

import json
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from data_fixtures import data_service_env, upload, wait_for_job
from grpc_health.v1 import health_pb2, health_pb2_grpc

from finetune.v1 import common_pb2, data_pb2, data_pb2_grpc
from ftcommon.artifacts import ArtifactStore
from ftcommon.grpc_client import open_channel

REPO_ROOT = Path(__file__).resolve().parent.parent
ROWS = 16_000  # enough that tokenizing takes seconds, so the kill lands in the middle


def start_service(env: dict[str, str], log: Path) -> subprocess.Popen:
    process = subprocess.Popen(
        [sys.executable, "-m", "services.data.server"],
        cwd=REPO_ROOT,
        env=env,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )
    address = f"127.0.0.1:{env['FT_DATA_PORT']}"
    deadline = time.monotonic() + 60
    with grpc.insecure_channel(address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            assert process.poll() is None, log.read_text()[-3000:]
            try:
                if health.Check(health_pb2.HealthCheckRequest(), timeout=1).status == 1:
                    return process
            except grpc.RpcError:
                time.sleep(0.2)
    process.kill()
    raise AssertionError("the data service did not start")


def big_dataset() -> bytes:
    rows = (
        {
            "question": f"Which worker runs training job number {i} and where are its checkpoints stored?",
            "answer": f"Job {i} runs on worker {i % 7}; checkpoints go to the artifact store under its id {i * 31}.",
        }
        for i in range(ROWS)
    )
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


@pytest.mark.slow
def test_kill_during_prepare_then_restart(trainer_server, data_root: Path, tmp_path: Path):
    env = data_service_env(tmp_path, data_root, trainer_server.address)
    log = tmp_path / "service.log"
    service = start_service(env, log)
    try:
        with open_channel(f"127.0.0.1:{env['FT_DATA_PORT']}") as channel:
            stub = data_pb2_grpc.DataServiceStub(channel)
            dataset = upload(stub, big_dataset(), "big.jsonl")
            job = stub.PrepareDataset(
                data_pb2.PrepareDatasetRequest(
                    dataset_id=dataset.id, base_model="smollm2-135m-instruct", max_seq_len=256
                )
            )
            for event in stub.WatchPrepareJob(common_pb2.WatchRequest(id=job.status.id), timeout=120):
                if event.kind == common_pb2.EVENT_KIND_PROGRESS and 0.1 < event.progress < 0.8:
                    break
        service.send_signal(signal.SIGKILL)
        service.wait(10)
        with sqlite3.connect(tmp_path / "data.db") as db:
            assert db.execute("select state from prepare_jobs").fetchall() == [
                (common_pb2.JOB_STATE_RUNNING,)
            ]
            assert db.execute("select count(*) from prepared_versions").fetchone() == (0,)

        service = start_service(env, log)
        with open_channel(f"127.0.0.1:{env['FT_DATA_PORT']}") as channel:
            stub = data_pb2_grpc.DataServiceStub(channel)
            done = wait_for_job(stub, job.status.id, timeout=180)
            assert done.status.state in (common_pb2.JOB_STATE_SUCCEEDED, common_pb2.JOB_STATE_FAILED)
            versions = stub.ListPreparedVersions(data_pb2.ListPreparedVersionsRequest()).versions
            if done.status.state == common_pb2.JOB_STATE_SUCCEEDED:
                assert done.status.attempt == 2
                assert [v.id for v in versions] == [done.prepared_version_id]
                ArtifactStore(str(data_root / "artifacts")).local_dir(versions[0].artifact.uri, verify=True)
                assert (
                    sum(versions[0].split_stats[s].examples for s in ("train", "validation", "test")) == ROWS
                )
            else:
                assert versions == []
    finally:
        service.kill()
        service.wait(10)

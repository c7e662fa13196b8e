"""Jobs' metrics on a team's own MLflow tracking server: a real `mlflow server` (SQLite store) started here,
real trainer worker processes training the default model for a few steps, the official client reading back."""

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from data_fixtures import prepared_qa_version
from trainer_support import FACTS

from finetune.v1 import common_pb2, data_pb2, trainer_pb2, trainer_pb2_grpc
from ftcommon.grpc_client import open_channel
from ftcommon.specs.train import TrainSpec
from services.trainer.config import DEFAULT_BASE_MODEL_NAME, TrainerSettings
from services.trainer.mlflow_tracking import FINISHED, JOB_ID_TAG, JobRun, end_job_run

mlflow = pytest.importorskip("mlflow", reason="mlflow is not installed (the dev extra installs it)")

REPO_ROOT = Path(__file__).resolve().parent.parent
STEPS = 3
WAIT_SECONDS = 240
EXPERIMENT = "platform-tests"
TINY = {
    "lora_rank": 4,
    "learning_rate": 1e-3,
    "max_steps": STEPS,
    "batch_size": 2,
    "warmup_steps": 0,
    "eval_every_steps": 2,
    "checkpoint_every_steps": STEPS,  # none in between: nothing to merge but the job's own model
    "seed": 5,
    "precision": "fp32",
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def mlflow_url(tmp_path_factory) -> Iterator[str]:
    folder = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    log = folder / "server.log"
    command = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port)]
    command += ["--workers", "1", "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}"]
    command += ["--artifacts-destination", str(folder / "artifacts")]
    # The server's background job runner needs packages only the full mlflow distribution brings.
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    with log.open("wb") as output:
        server = subprocess.Popen(command, env=env, stdout=output, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None, f"mlflow server exited: {log.read_text()[-2000:]}"
            assert time.monotonic() < deadline, f"mlflow server did not answer: {log.read_text()[-2000:]}"
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


@pytest.fixture(scope="module")
def mlflow_client(mlflow_url):
    return mlflow.MlflowClient(tracking_uri=mlflow_url)


@pytest.fixture(scope="module")
def trainer_stub(data_root, data_server, trainer_server) -> Iterator[trainer_pb2_grpc.TrainerServiceStub]:
    """A trainer server on the shared data root that knows where the data service listens."""
    from services.trainer.server import build_server

    running = build_server(TrainerSettings(data_dir=data_root, port=0, data_address=data_server.address))
    with open_channel(running.address) as channel:
        yield trainer_pb2_grpc.TrainerServiceStub(channel)
    running.stop(grace=1)


@pytest.fixture(scope="module")
def prepared_version_id(data_root, data_stub) -> str:
    split = data_pb2.SplitFractions(train=0.8, validation=0.2, test=0.0)
    return prepared_qa_version(data_stub, data_root, "mlflow-facts", FACTS, split, seed=7)


def run_job_with_worker(
    stub, data_root: Path, prepared_version_id: str, tracking_uri: str, name: str
) -> tuple[trainer_pb2.TrainingJob, list[common_pb2.JobEvent]]:
    """One tiny job, run to its end by a worker process started with the tracking setting."""
    env = {
        **os.environ,
        "FT_TRAINER_DATA_DIR": str(data_root),
        "FT_TRAINER_JOBS__POLL_SECONDS": "0.2",
        "FT_TRAINER_JOBS__HEARTBEAT_SECONDS": "0.5",
        "FT_TRAINER_TORCH_THREADS": "2",
        "FT_TRAINER_LOG_LEVEL": "WARNING",
        "FT_TRAINER_MLFLOW_TRACKING_URI": tracking_uri,
        "FT_TRAINER_MLFLOW_EXPERIMENT_NAME": EXPERIMENT,
        "FT_TRAINER_MLFLOW_TIMEOUT_SECONDS": "2",
    }
    worker = subprocess.Popen([sys.executable, "-m", "services.trainer.worker"], cwd=REPO_ROOT, env=env)
    try:
        spec = TrainSpec(
            base_model=DEFAULT_BASE_MODEL_NAME,
            prepared_version_id=prepared_version_id,
            hyperparameters=TINY,
            display_name=name,
            idempotency_key=name,
        )
        job = stub.CreateJob(spec.to_request())
        request = common_pb2.WatchRequest(id=job.status.id)
        # The worker ends the MLflow run before it settles the job, so the run is ended when the stream is.
        events = list(stub.WatchJob(request, timeout=WAIT_SECONDS))
        return stub.GetJob(trainer_pb2.GetJobRequest(id=job.status.id)), events
    finally:
        worker.terminate()
        worker.wait(timeout=30)


def metric_events(events: list[common_pb2.JobEvent], kind: int) -> dict[int, dict[str, float]]:
    return {int(e.metrics["step"]): dict(e.metrics) for e in events if e.kind == kind}


def history(client, run_id: str, key: str) -> dict[int, float]:
    points = client.get_metric_history(run_id, key)
    assert len({p.step for p in points}) == len(points), f"{key} logged a step twice"
    return {p.step: p.value for p in points}


@pytest.mark.slow
def test_a_job_is_one_mlflow_run_with_its_hyperparameters_lineage_and_step_metrics(
    trainer_stub, data_root, prepared_version_id, mlflow_url, mlflow_client
):
    job, events = run_job_with_worker(trainer_stub, data_root, prepared_version_id, mlflow_url, "mlflow-tiny")
    assert job.status.state == common_pb2.JOB_STATE_SUCCEEDED, job.status.error
    assert not [e.message for e in events if "MLflow" in e.message]

    experiment = mlflow_client.get_experiment_by_name(EXPERIMENT)
    runs = mlflow_client.search_runs(
        [experiment.experiment_id], filter_string=f"tags.`{JOB_ID_TAG}` = '{job.status.id}'"
    )
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == FINISHED and run.info.run_name == "mlflow-tiny"
    params, tags = run.data.params, run.data.tags
    assert params["lora_rank"] == "4" and params["max_steps"] == str(STEPS) and params["seed"] == "5"
    assert float(params["learning_rate"]) == 1e-3 and params["precision"] == "fp32"
    assert params["method"] == "lora"
    assert tags["finetune.base_model"] == DEFAULT_BASE_MODEL_NAME
    assert tags["finetune.prepared_version_id"] == prepared_version_id
    assert tags["finetune.dataset_id"].startswith("ds")
    assert tags["finetune.platform"] == "finetune-platform"

    train_steps = metric_events(events, common_pb2.EVENT_KIND_TRAIN_STEP)
    assert sorted(train_steps) == list(range(1, STEPS + 1))
    for key in ("loss", "learning_rate", "tokens_per_second", "mean_token_accuracy", "grad_norm"):
        expected = {step: metrics[key] for step, metrics in train_steps.items()}
        assert history(mlflow_client, run.info.run_id, key) == pytest.approx(expected, rel=1e-12), key
    validations = metric_events(events, common_pb2.EVENT_KIND_VALIDATION)
    assert sorted(validations) == [2, STEPS]
    for key in ("validation_loss", "validation_mean_token_accuracy"):
        expected = {step: metrics[key] for step, metrics in validations.items()}
        assert history(mlflow_client, run.info.run_id, key) == pytest.approx(expected, rel=1e-12), key
    assert "eta_seconds" not in run.data.metrics and "total_steps" not in run.data.metrics


@pytest.mark.slow
def test_an_unreachable_tracking_server_warns_once_and_the_job_succeeds(
    trainer_stub, data_root, prepared_version_id
):
    unreachable = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    job, events = run_job_with_worker(
        trainer_stub, data_root, prepared_version_id, unreachable, "mlflow-unreachable"
    )
    assert job.status.state == common_pb2.JOB_STATE_SUCCEEDED, job.status.error
    assert job.step == STEPS
    warnings = [e.message for e in events if e.message.startswith("MLflow tracking stopped for this job")]
    assert len(warnings) == 1, [e.message for e in events]


@pytest.mark.slow
def test_a_resumed_attempt_continues_the_job_s_run_without_repeating_steps(mlflow_url, mlflow_client):
    settings = TrainerSettings(mlflow_tracking_uri=mlflow_url, mlflow_experiment_name=EXPERIMENT)
    warnings: list[str] = []
    first = JobRun(settings, "tj-resumed", warnings.append)
    first.start("resumed", {"learning_rate": "0.001"}, {"finetune.base_model": "m"})
    for step in (1, 2, 3):
        first.log_train_step({"step": step, "total_steps": 5, "loss": 10.0 + step})
    first.log_validation({"step": 2, "validation_loss": 7.0})
    first.close()
    # The process dies; the next attempt resumed from the checkpoint at step 1 and repeats steps 2 and 3.
    second = JobRun(settings, "tj-resumed", warnings.append)
    second.start("resumed", {"learning_rate": "0.001"}, {"finetune.base_model": "m"})
    assert second.run_id == first.run_id
    assert mlflow_client.get_run(first.run_id).info.status == "RUNNING"
    for step in (2, 3, 4, 5):
        second.log_train_step({"step": step, "total_steps": 5, "loss": 20.0 + step})
    second.log_validation({"step": 2, "validation_loss": 8.0})
    second.log_validation({"step": 4, "validation_loss": 6.0})
    second.close()
    assert end_job_run(settings, "tj-resumed", FINISHED) is None

    assert warnings == []
    assert history(mlflow_client, first.run_id, "loss") == {1: 11.0, 2: 12.0, 3: 13.0, 4: 24.0, 5: 25.0}
    assert history(mlflow_client, first.run_id, "validation_loss") == {2: 7.0, 4: 6.0}
    assert mlflow_client.get_run(first.run_id).info.status == FINISHED


def test_tracking_against_a_dead_server_is_bounded_and_never_raises():
    settings = TrainerSettings(
        mlflow_tracking_uri=f"http://127.0.0.1:{free_port()}", mlflow_timeout_seconds=1, mlflow_max_retries=0
    )
    warnings: list[str] = []
    started = time.monotonic()
    run = JobRun(settings, "tj-dead", warnings.append)
    run.start("dead", {}, {})
    run.log_train_step({"step": 1, "loss": 1.0})
    assert end_job_run(settings, "tj-dead", FINISHED) is not None
    assert time.monotonic() - started < 10
    assert len(warnings) == 1 and "opening the run failed" in warnings[0]


def test_without_the_setting_the_trainer_never_imports_mlflow():
    check = (
        "import sys, services.trainer.run_job, services.trainer.worker, services.trainer.server; "
        "assert 'mlflow' not in sys.modules, 'mlflow imported'"
    )
    subprocess.run([sys.executable, "-c", check], cwd=REPO_ROOT, check=True, timeout=120)

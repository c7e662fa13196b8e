"""Training jobs end to end: real gRPC trainer and data services, real worker processes, the real default
model at tiny settings. One uninterrupted job is shared by the tests that read its outputs."""

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import torch
from data_fixtures import prepared_qa_version
from trainer_support import FACTS, conversation

from finetune.v1 import common_pb2, data_pb2, trainer_pb2, trainer_pb2_grpc
from ftcommon.artifacts import ArtifactStore
from ftcommon.grpc_client import open_channel
from ftcommon.hardware import cpu_has_native_bf16
from services.trainer.compiled_layers import cpu_compiler_available
from services.trainer.config import DEFAULT_BASE_MODEL_NAME, TrainerSettings

pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parent.parent
STEPS = 4
TINY = trainer_pb2.Hyperparameters(
    lora_rank=4,
    lora_dropout=0.0,  # lets a 2-process run reproduce the single-process losses exactly
    learning_rate=1e-3,
    max_steps=STEPS,
    batch_size=2,
    warmup_steps=0,
    eval_every_steps=STEPS,
    checkpoint_every_steps=2,
    seed=11,
    # The cross-layout comparisons are invariants of the arithmetic; bf16 rounding (the default on CPUs with
    # native bf16) is measured against fp32 in test_trainer_recipe.py.
    precision="fp32",
)
WAIT_SECONDS = 240


class Workers:
    """Worker processes over the test's data root; each can be killed like a crashed machine."""

    def __init__(self, data_root: Path) -> None:
        self.data_root = data_root
        self.processes: list[subprocess.Popen] = []

    def start(self) -> subprocess.Popen:
        env = {
            **os.environ,
            "FT_TRAINER_DATA_DIR": str(self.data_root),
            "FT_TRAINER_WORKER_POLL_SECONDS": "0.2",
            "FT_TRAINER_HEARTBEAT_SECONDS": "0.5",
            "FT_TRAINER_STALE_AFTER_SECONDS": "3",
            "FT_TRAINER_CANCEL_GRACE_SECONDS": "5",
            "FT_TRAINER_TORCH_THREADS": "2",
            "FT_TRAINER_LOG_LEVEL": "WARNING",
        }
        process = subprocess.Popen([sys.executable, "-m", "services.trainer.worker"], cwd=REPO_ROOT, env=env)
        self.processes.append(process)
        return process

    def stop_all(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.terminate()
        for process in self.processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()


@pytest.fixture(scope="module")
def trainer_address(data_root, data_server, trainer_server) -> Iterator[str]:
    """A trainer server on the shared data root that knows where the data service listens."""
    from services.trainer.server import build_server

    running = build_server(TrainerSettings(data_dir=data_root, port=0, data_address=data_server.address))
    yield running.address
    running.stop(grace=1)


@pytest.fixture(scope="module")
def stub(trainer_address) -> Iterator[trainer_pb2_grpc.TrainerServiceStub]:
    with open_channel(trainer_address) as channel:
        yield trainer_pb2_grpc.TrainerServiceStub(channel)


@pytest.fixture(scope="module")
def workers(data_root) -> Iterator[Workers]:
    pool = Workers(data_root)
    pool.start()
    yield pool
    pool.stop_all()


@pytest.fixture(scope="module")
def prepared_version_id(data_root, data_stub) -> str:
    split = data_pb2.SplitFractions(train=0.8, validation=0.2, test=0.0)
    return prepared_qa_version(data_stub, data_root, "facts", FACTS, split, seed=3)


def create(stub, prepared_version_id: str, key: str, **overrides: object) -> trainer_pb2.TrainingJob:
    hyperparameters = trainer_pb2.Hyperparameters()
    hyperparameters.CopyFrom(TINY)
    for name, value in overrides.items():
        setattr(hyperparameters, name, value)
    return stub.CreateJob(
        trainer_pb2.CreateJobRequest(
            base_model=DEFAULT_BASE_MODEL_NAME,
            prepared_version_id=prepared_version_id,
            hyperparameters=hyperparameters,
            idempotency_key=key,
        )
    )


def watch(stub, job_id: str, after_index: int = 0) -> list[common_pb2.JobEvent]:
    return list(
        stub.WatchJob(common_pb2.WatchRequest(id=job_id, after_index=after_index), timeout=WAIT_SECONDS)
    )


def wait_for_event(stub, job_id: str, kind: int) -> common_pb2.JobEvent:
    for event in stub.WatchJob(common_pb2.WatchRequest(id=job_id), timeout=WAIT_SECONDS):
        if event.kind == kind:
            return event
    raise AssertionError(f"job {job_id} ended without an event of kind {kind}")


def job_pids(events: list[common_pb2.JobEvent]) -> list[int]:
    return [int(e.message.rsplit(" ", 1)[1]) for e in events if "job process pid" in e.message]


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie has exited but waits for its parent to read its status.
    status = Path(f"/proc/{pid}/status")
    return status.exists() and "zombie" not in status.read_text()


def train_losses(events: list[common_pb2.JobEvent]) -> dict[int, float]:
    return {
        int(e.metrics["step"]): e.metrics["loss"]
        for e in events
        if e.kind == common_pb2.EVENT_KIND_TRAIN_STEP
    }


@pytest.fixture(scope="module")
def finished(stub, workers, prepared_version_id) -> tuple[trainer_pb2.TrainingJob, list[common_pb2.JobEvent]]:
    job = create(stub, prepared_version_id, key="tiny-uninterrupted")
    events = watch(stub, job.status.id)
    return stub.GetJob(trainer_pb2.GetJobRequest(id=job.status.id)), events


def test_a_job_succeeds_with_ordered_events(finished):
    job, events = finished
    assert job.status.state == common_pb2.JOB_STATE_SUCCEEDED, job.status.error
    assert [e.index for e in events] == list(range(1, len(events) + 1))
    states = [e.state for e in events if e.kind == common_pb2.EVENT_KIND_STATE]
    assert states == [
        common_pb2.JOB_STATE_QUEUED,
        common_pb2.JOB_STATE_RUNNING,
        common_pb2.JOB_STATE_SUCCEEDED,
    ]
    steps = [e for e in events if e.kind == common_pb2.EVENT_KIND_TRAIN_STEP]
    assert [int(e.metrics["step"]) for e in steps] == list(range(1, STEPS + 1))
    for event in steps:
        assert {"loss", "learning_rate", "grad_norm", "tokens_per_second", "eta_seconds"} <= set(
            event.metrics
        )
        assert event.metrics["tokens_per_second"] > 0
        assert 0 <= event.metrics["mean_token_accuracy"] <= 1
    assert [e.progress for e in steps] == sorted(e.progress for e in steps)
    validations = [int(e.metrics["step"]) for e in events if e.kind == common_pb2.EVENT_KIND_VALIDATION]
    assert validations == [STEPS]
    checkpoints = [int(e.metrics["step"]) for e in events if e.kind == common_pb2.EVENT_KIND_CHECKPOINT]
    assert checkpoints == [2]
    assert job.step == STEPS and job.total_steps == STEPS and job.status.progress == 1.0
    assert job.hyperparameters.lora_rank == 4 and job.hyperparameters.target_modules == ["all-linear"]


@pytest.mark.skipif(
    not (cpu_has_native_bf16() and cpu_compiler_available()),
    reason="compiling pays only for bf16, and this CPU emulates it or has no C++ compiler",
)
def test_a_compiled_bf16_job_says_so_and_records_it(stub, workers, prepared_version_id):
    """torch.compile in a real job process: the job succeeds, its log says the layers were compiled, and the
    stored hyperparameters hold what it ran with."""
    job = create(stub, prepared_version_id, key="tiny-compiled", precision="bf16", torch_compile=True)
    events = watch(stub, job.status.id)
    job = stub.GetJob(trainer_pb2.GetJobRequest(id=job.status.id))
    assert job.status.state == common_pb2.JOB_STATE_SUCCEEDED, job.status.error
    (log,) = [e.message for e in events if e.message.startswith("training in ")]
    assert "norms and MLPs compiled with torch.compile (requested" in log
    assert job.hyperparameters.torch_compile and job.hyperparameters.precision == "bf16"


def test_the_merged_model_is_registered_with_lineage_and_answers(
    stub, finished, data_root, prepared_version_id
):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    job, _ = finished
    merged = stub.GetModel(trainer_pb2.GetModelRequest(name=job.merged_model_id))
    adapter = stub.GetModel(trainer_pb2.GetModelRequest(name=job.adapter_model_id))
    base = stub.GetModel(trainer_pb2.GetModelRequest(name=DEFAULT_BASE_MODEL_NAME))
    assert merged.kind == trainer_pb2.MODEL_KIND_MERGED and adapter.kind == trainer_pb2.MODEL_KIND_ADAPTER
    for model in (merged, adapter):
        assert model.lineage.job_id == job.status.id
        assert model.lineage.base_model_id == base.id
        assert model.lineage.prepared_version_id == prepared_version_id
        assert json.loads(model.lineage.hyperparameters_json)["lora_rank"] == 4
        assert model.lineage.code_version
        assert model.eos_token == "<|im_end|>"
        assert "train_loss" in model.metrics
    folder = ArtifactStore(str(data_root / "artifacts")).local_dir(merged.artifact.uri, verify=True)
    assert (folder / "loss_curve.png").stat().st_size > 1000
    metrics = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in metrics if r["event"] == "train"] == list(range(1, STEPS + 1))
    assert json.loads((folder / "generation_config.json").read_text())["eos_token_id"] == 2

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder)
    question, _ = FACTS[0]
    prompt = tokenizer.apply_chat_template(
        conversation(question, "")[:1], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    output = model.generate(**prompt, max_new_tokens=24, do_sample=False)
    answer = tokenizer.decode(output[0, prompt["input_ids"].shape[1] :], skip_special_tokens=True)
    assert answer.strip()


def test_merged_logits_equal_base_plus_adapter_logits(stub, finished, data_root, default_model_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    job, _ = finished
    store = ArtifactStore(str(data_root / "artifacts"))
    merged_dir = store.local_dir(
        stub.GetModel(trainer_pb2.GetModelRequest(name=job.merged_model_id)).artifact.uri
    )
    adapter_dir = store.local_dir(
        stub.GetModel(trainer_pb2.GetModelRequest(name=job.adapter_model_id)).artifact.uri
    )
    tokens = torch.tensor([[1, 9690, 198, 19556, 314, 253, 1789, 30, 2]])
    with torch.no_grad():
        merged = AutoModelForCausalLM.from_pretrained(merged_dir).eval()(tokens).logits
        adapted_model = PeftModel.from_pretrained(
            AutoModelForCausalLM.from_pretrained(default_model_dir), adapter_dir
        )
        adapted = adapted_model.eval()(tokens).logits
        base = AutoModelForCausalLM.from_pretrained(default_model_dir).eval()(tokens).logits
    torch.testing.assert_close(merged, adapted, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(merged, base, atol=1e-3), "training changed nothing"


def test_the_same_idempotency_key_returns_the_same_job(stub, finished, prepared_version_id):
    job, _ = finished
    again = create(stub, prepared_version_id, key="tiny-uninterrupted")
    assert again.status.id == job.status.id


def test_a_watcher_that_reconnects_gets_the_rest_exactly_once(stub, finished):
    job, events = finished
    middle = len(events) // 2
    rest = watch(stub, job.status.id, after_index=events[middle - 1].index)
    assert [e.index for e in events[:middle] + rest] == [e.index for e in events]
    assert rest[0].index == middle + 1


def test_invalid_hyperparameters_name_the_field(stub, prepared_version_id):
    with pytest.raises(grpc.RpcError) as err:
        create(stub, prepared_version_id, key="bad-rank", lora_rank=-4)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "hyperparameters.lora_rank" in err.value.details()
    with pytest.raises(grpc.RpcError) as err:
        create(stub, prepared_version_id, key="bad-warmup", max_steps=2, warmup_steps=5)
    assert "hyperparameters.warmup_steps" in err.value.details()
    with pytest.raises(grpc.RpcError) as err:
        create(stub, prepared_version_id, key="fsdp-alone", strategy=trainer_pb2.DISTRIBUTED_STRATEGY_FSDP)
    assert "hyperparameters.strategy" in err.value.details() and "num_processes" in err.value.details()
    listed = stub.ListJobs(trainer_pb2.ListJobsRequest())
    assert all(j.hyperparameters.lora_rank > 0 for j in listed.jobs)


def test_cancel_mid_run_stops_the_job_process_and_registers_nothing(
    stub, workers, finished, prepared_version_id
):
    job = create(stub, prepared_version_id, key="to-cancel", max_steps=200, checkpoint_every_steps=1000)
    wait_for_event(stub, job.status.id, common_pb2.EVENT_KIND_TRAIN_STEP)
    stub.CancelJob(trainer_pb2.GetJobRequest(id=job.status.id))
    events = watch(stub, job.status.id)
    final = stub.GetJob(trainer_pb2.GetJobRequest(id=job.status.id))
    assert final.status.state == common_pb2.JOB_STATE_CANCELLED
    assert final.step < 200 and not final.merged_model_id
    (pid,) = job_pids(events)
    assert not pid_alive(pid)
    models = stub.ListModels(trainer_pb2.ListModelsRequest()).models
    assert not [m for m in models if m.lineage.job_id == job.status.id]


def test_a_paused_job_checkpoints_and_resumes_exactly(
    stub, workers, finished, prepared_version_id, trainer_address, monkeypatch
):
    from typer.testing import CliRunner

    from ftctl.main import app

    reference, reference_events = finished
    monkeypatch.setenv("FT_TRAINER_ADDRESS", trainer_address)
    cli = CliRunner()
    # No periodic checkpoint: the one it resumes from is the one the pause writes.
    job = create(stub, prepared_version_id, key="to-pause", checkpoint_every_steps=1000)
    job_id = job.status.id
    wait_for_event(stub, job_id, common_pb2.EVENT_KIND_TRAIN_STEP)
    paused_by_cli = cli.invoke(app, ["train", "pause", job_id])
    assert paused_by_cli.exit_code == 0 and "ftctl train resume" in paused_by_cli.output, paused_by_cli.output
    paused = wait_for_state(stub, job_id, common_pb2.JOB_STATE_PAUSED)
    assert 0 < paused.step < STEPS and not paused.merged_model_id
    (checkpoint,) = stub.ListCheckpoints(trainer_pb2.GetJobRequest(id=job_id)).checkpoints
    assert checkpoint.step == paused.step

    resumed_by_cli = cli.invoke(app, ["train", "resume", job_id, "--json"])
    assert resumed_by_cli.exit_code == 0, resumed_by_cli.output
    resumed_state = json.loads(resumed_by_cli.stdout)["status"]["state"]
    assert resumed_state in ("JOB_STATE_QUEUED", "JOB_STATE_RUNNING")
    events = watch(stub, job_id)
    final = stub.GetJob(trainer_pb2.GetJobRequest(id=job_id))
    assert final.status.state == common_pb2.JOB_STATE_SUCCEEDED, final.status.error
    assert final.step == STEPS and final.status.attempt == 2
    assert f"resumed from checkpoint {checkpoint.id} at step {paused.step}" in [e.message for e in events]
    assert final.metrics["tokens_seen"] == reference.metrics["tokens_seen"]
    losses, reference_losses = train_losses(events), train_losses(reference_events)
    for step, loss in losses.items():
        assert loss == pytest.approx(reference_losses[step], rel=1e-3), step
    # The pause's checkpoint, merged into a servable model when the job succeeded.
    (kept,) = stub.ListCheckpoints(trainer_pb2.GetJobRequest(id=job_id)).checkpoints
    checkpoint_model = stub.GetModel(trainer_pb2.GetModelRequest(name=kept.model_id))
    assert checkpoint_model.kind == trainer_pb2.MODEL_KIND_MERGED
    assert checkpoint_model.name == f"{job_id}-step-{paused.step}-merged"
    assert checkpoint_model.lineage.job_id == job_id and checkpoint_model.id != final.merged_model_id
    with pytest.raises(grpc.RpcError) as ended:
        stub.PauseJob(trainer_pb2.GetJobRequest(id=job_id))
    assert ended.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    refused = cli.invoke(app, ["train", "pause", job_id])
    assert refused.exit_code != 0 and "FAILED_PRECONDITION" in refused.output, refused.output


def wait_for_state(stub, job_id: str, state: int) -> trainer_pb2.TrainingJob:
    deadline = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < deadline:
        job = stub.GetJob(trainer_pb2.GetJobRequest(id=job_id))
        if job.status.state == state:
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} never reached state {state}")


ONE_PROCESS: dict[str, object] = {}
# 2 processes x 1 example a step = the reference's 1 process x 2 examples.
TWO_FSDP_PROCESSES = {"batch_size": 1, "num_processes": 2, "strategy": trainer_pb2.DISTRIBUTED_STRATEGY_FSDP}


@pytest.mark.parametrize("layout", [ONE_PROCESS, TWO_FSDP_PROCESSES], ids=["one-process", "fsdp"])
def test_a_killed_worker_s_job_resumes_from_its_checkpoint(
    stub, workers, finished, prepared_version_id, layout
):
    reference, reference_events = finished
    job = create(stub, prepared_version_id, key=f"to-kill-{len(layout)}", **layout)
    wait_for_event(stub, job.status.id, common_pb2.EVENT_KIND_CHECKPOINT)
    for process in workers.processes:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
            process.wait()
    workers.start()  # the replacement requeues the silent job and resumes it
    events = watch(stub, job.status.id)
    final = stub.GetJob(trainer_pb2.GetJobRequest(id=job.status.id))
    assert final.status.state == common_pb2.JOB_STATE_SUCCEEDED, final.status.error
    assert final.status.attempt == 2 and final.step == STEPS
    first_pid = job_pids(events)[0]
    assert not pid_alive(first_pid), "the killed worker's job process must die with it"
    assert any(e.message.startswith("resumed from checkpoint") for e in events)
    losses, reference_losses = train_losses(events), train_losses(reference_events)
    assert sorted(losses) == list(range(1, STEPS + 1))
    for step, loss in losses.items():
        assert loss == pytest.approx(reference_losses[step], rel=1e-3), step


@pytest.mark.parametrize(
    "strategy",
    [trainer_pb2.DISTRIBUTED_STRATEGY_DDP, trainer_pb2.DISTRIBUTED_STRATEGY_FSDP],
    ids=["ddp", "fsdp"],
)
def test_two_processes_reproduce_the_single_process_losses(
    stub, workers, finished, prepared_version_id, strategy
):
    _, reference_events = finished
    # 2 processes x 1 example = the reference's 1 process x 2 examples per step.
    job = create(
        stub,
        prepared_version_id,
        key=f"two-processes-{strategy}",
        max_steps=2,
        batch_size=1,
        num_processes=2,
        strategy=strategy,
        checkpoint_every_steps=1,
    )
    events = watch(stub, job.status.id)
    final = stub.GetJob(trainer_pb2.GetJobRequest(id=job.status.id))
    assert final.status.state == common_pb2.JOB_STATE_SUCCEEDED, final.status.error
    losses, reference_losses = train_losses(events), train_losses(reference_events)
    assert sorted(losses) == [1, 2]
    for step, loss in losses.items():
        assert loss == pytest.approx(reference_losses[step], rel=1e-3), step


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA worker trains QLoRA instead of refusing it")
def test_qlora_without_a_gpu_fails_with_the_reason(stub, workers, prepared_version_id):
    job = create(stub, prepared_version_id, key="qlora-on-cpu", method=trainer_pb2.TRAINING_METHOD_QLORA)
    watch(stub, job.status.id)
    final = stub.GetJob(trainer_pb2.GetJobRequest(id=job.status.id))
    assert final.status.state == common_pb2.JOB_STATE_FAILED
    assert "qlora needs a CUDA GPU and the bitsandbytes package" in final.status.error
    assert not final.merged_model_id


def test_the_cli_creates_lists_and_shows_with_lineage(
    trainer_address, finished, prepared_version_id, tmp_path, monkeypatch
):
    from typer.testing import CliRunner

    from ftctl.main import app

    job, _ = finished
    monkeypatch.setenv("FT_TRAINER_ADDRESS", trainer_address)
    job_file = tmp_path / "job.yaml"
    job_file.write_text("hyperparameters:\n  lora_rank: 4\n  schedule: linear\n  max_steps: 4\n")
    runner = CliRunner()
    created = runner.invoke(
        app,
        [
            "train",
            "create",
            "--dataset",
            prepared_version_id,
            "--config",
            str(job_file),
            "--idempotency-key",
            "tiny-uninterrupted",
            "--json",
        ],
    )
    assert created.exit_code == 0, created.output
    assert json.loads(created.stdout)["status"]["id"] == job.status.id
    listed = runner.invoke(app, ["train", "list", "--state", "succeeded", "--json"])
    assert job.status.id in [j["status"]["id"] for j in json.loads(listed.stdout)["jobs"]]
    models = json.loads(runner.invoke(app, ["models", "list", "--kind", "merged", "--json"]).stdout)["models"]
    merged = next(m for m in models if m["id"] == job.merged_model_id)
    assert merged["lineage"]["job_id"] == job.status.id
    watched = runner.invoke(app, ["train", "watch", job.status.id])
    assert watched.exit_code == 0 and "succeeded" in watched.output

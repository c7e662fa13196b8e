"""The OpenAI fine-tuning API on the gateway, driven by the official `openai` client against real services:
data and trainer over gRPC on loopback, a real trainer worker process, the real default model at tiny
settings (a few short conversations, one epoch, one optimizer step)."""

import csv
import io
import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import openai
import pytest
from gateway_support import loopback_gateway_settings
from openai import OpenAI
from test_trainer_jobs import Workers

from finetune.v1 import registry_pb2, registry_pb2_grpc, trainer_pb2
from ftcommon.grpc_client import open_channel
from services.inference.auth import KeyStore
from services.inference.keys import open_gateway_database

BASE_MODEL = "smollm2-135m-instruct"
WAIT_SECONDS = 240
# Eight optimizer steps of one example: long enough to pause, cancel or kill mid-run, short enough for CPUs.
SEVERAL_STEPS = {"n_epochs": 2, "batch_size": 1}

ROWS = [
    ("What colour is the Zorblat widget?", "The Zorblat widget is teal."),
    ("Which port does Gantry listen on?", "Gantry listens on port 7421."),
    ("Who approves Larkspur releases?", "Larkspur releases are approved by Dana."),
    ("What database does Thistle use?", "Thistle uses PostgreSQL."),
]


def chat_line(question: str, answer: str, **extra: object) -> str:
    messages = [
        {"role": "system", "content": "You answer questions about internal services."},
        {"role": "user", "content": question},
        {"role": "assistant", "content": answer, **extra},
    ]
    return json.dumps({"messages": messages})


def training_file(rows: list[str]) -> io.BytesIO:
    content = io.BytesIO(("\n".join(rows) + "\n").encode())
    content.name = "train.jsonl"
    return content


@pytest.fixture(scope="module")
def stack(data_root: Path, data_server, trainer_server) -> Iterator[dict[str, object]]:
    """A trainer that reaches the data service, one worker process, and the gateway with keys required."""
    from services.inference.server import build_server
    from services.trainer.config import TrainerSettings
    from services.trainer.server import build_server as build_trainer

    trainer = build_trainer(TrainerSettings(data_dir=data_root, port=0, data_address=data_server.address))
    workers = Workers(data_root)  # killable like a crashed machine; a lost one's job is requeued after 3 s
    workers.start()
    settings = loopback_gateway_settings(
        data_root / "openai-gateway",
        trainer.address,
        data_address=data_server.address,
        artifact_store_url=str(data_root / "artifacts"),
        fine_tuning_poll_seconds=0.2,
    )
    gateway = build_server(settings)
    keys = KeyStore(open_gateway_database(settings))
    yield {"url": gateway.http_url + "/v1", "keys": keys, "trainer": trainer.address, "workers": workers}
    gateway.stop(grace=1)
    workers.stop_all()
    trainer.stop(grace=1)


def client_for(stack: dict[str, object], project: str, scopes: tuple[str, ...]) -> OpenAI:
    keys: KeyStore = stack["keys"]  # type: ignore[assignment]
    _, secret = keys.create(f"{project}-{'-'.join(scopes)}", scopes=scopes, project=project)
    return OpenAI(base_url=str(stack["url"]), api_key=secret, max_retries=0)


@pytest.fixture(scope="module")
def team(stack) -> OpenAI:
    return client_for(stack, "team-a", ("chat", "fine-tune"))


def wait_until_finished(client: OpenAI, job_id: str) -> object:
    deadline = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < deadline:
        job = client.fine_tuning.jobs.retrieve(job_id)
        client.fine_tuning.jobs.list_events(job_id, limit=5)
        if job.status in ("succeeded", "failed", "cancelled"):
            return job
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} did not finish within {WAIT_SECONDS} s")


@pytest.mark.slow
def test_an_unmodified_openai_script_fine_tunes_and_chats(team: OpenAI):
    started = time.monotonic()
    # What a team's script does, unchanged but for base_url and api_key.
    uploaded = team.files.create(file=training_file([chat_line(q, a) for q, a in ROWS]), purpose="fine-tune")
    job = team.fine_tuning.jobs.create(
        training_file=uploaded.id,
        model=BASE_MODEL,
        suffix="support",
        seed=7,
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1}}},
        metadata={"team": "a"},
    )
    assert job.status == "validating_files" and job.user_provided_suffix == "support"
    job = wait_until_finished(team, job.id)
    assert job.status == "succeeded", job.error
    assert job.fine_tuned_model == f"ft:{BASE_MODEL}:support:{job.id}"
    assert job.trained_tokens and job.trained_tokens > 0
    assert job.hyperparameters.n_epochs == 1

    events = team.fine_tuning.jobs.list_events(job.id, limit=100).data
    messages = [e.message for e in reversed(events)]
    assert messages[0] == f"Created fine-tuning job: {job.id}"
    assert messages[-1] == "The job has successfully completed"
    metrics = [e for e in events if e.type == "metrics"]
    assert metrics and {"step", "train_loss", "total_steps"} <= set(metrics[0].data)

    checkpoints = team.fine_tuning.jobs.checkpoints.list(job.id).data
    assert [c.fine_tuned_model_checkpoint for c in checkpoints] == [job.fine_tuned_model]
    assert checkpoints[0].metrics.train_loss is not None

    reply = team.chat.completions.create(
        model=job.fine_tuned_model,
        messages=[{"role": "user", "content": ROWS[0][0]}],
        max_tokens=8,
        temperature=0,
    )
    assert reply.choices[0].message.content
    assert job.fine_tuned_model in [m.id for m in team.models.list().data]
    assert team.models.retrieve(job.fine_tuned_model).id == job.fine_tuned_model
    assert team.files.delete(uploaded.id).deleted
    with pytest.raises(openai.NotFoundError):
        team.files.retrieve(uploaded.id)
    print(f"\nOpenAI-style script: {time.monotonic() - started:.1f} s wall")


@pytest.mark.slow
def test_a_malformed_training_file_fails_the_job_naming_the_line(team: OpenAI):
    rows = [chat_line(q, a) for q, a in ROWS]
    rows[2] = json.dumps(
        {"messages": [{"role": "user", "content": "no answer field"}, {"role": "assistant"}]}
    )
    uploaded = team.files.create(file=training_file(rows), purpose="fine-tune")
    assert team.files.content(uploaded.id).content.decode().splitlines() == rows
    job = team.fine_tuning.jobs.create(training_file=uploaded.id, model=BASE_MODEL)
    job = wait_until_finished(team, job.id)
    assert job.status == "failed"
    assert job.error.code == "invalid_training_file" and job.error.param == "training_file"
    assert "line 3" in job.error.message and "messages[1].content" in job.error.message


def test_weights_zero_and_one_are_accepted_and_tools_are_refused_by_name(team: OpenAI):
    rows = [chat_line(q, a, weight=1) for q, a in ROWS]
    rows.append(json.dumps({"messages": json.loads(rows[0])["messages"], "tools": [{"type": "function"}]}))
    uploaded = team.files.create(file=training_file(rows), purpose="fine-tune")
    job = team.fine_tuning.jobs.create(training_file=uploaded.id, model=BASE_MODEL)
    job = wait_until_finished(team, job.id) if job.status == "validating_files" else job
    assert job.status == "failed" and "line 5 (tools)" in job.error.message


def test_refused_fields_name_themselves(team: OpenAI):
    uploaded = team.files.create(file=training_file([chat_line(q, a) for q, a in ROWS]), purpose="fine-tune")
    with pytest.raises(openai.BadRequestError) as reinforcement:
        team.fine_tuning.jobs.create(
            training_file=uploaded.id, model=BASE_MODEL, method={"type": "reinforcement"}
        )
    assert reinforcement.value.body["param"] == "method.type"
    with pytest.raises(openai.BadRequestError) as integrations:
        team.fine_tuning.jobs.create(
            training_file=uploaded.id,
            model=BASE_MODEL,
            integrations=[{"type": "wandb", "wandb": {"project": "x"}}],
        )
    assert integrations.value.body["param"] == "integrations"
    with pytest.raises(openai.BadRequestError) as purpose:
        team.files.create(file=training_file(["{}"]), purpose="assistants")
    assert purpose.value.body["param"] == "purpose"
    with pytest.raises(openai.BadRequestError) as model:
        team.fine_tuning.jobs.create(training_file=uploaded.id, model="no-such-model")
    assert model.value.body["param"] == "model"


def dpo_line(question: str, preferred: str, non_preferred: str) -> str:
    """A row of OpenAI's DPO format, as in OpenAI's preference fine-tuning guide."""
    return json.dumps(
        {
            "input": {"messages": [{"role": "user", "content": question}]},
            "preferred_output": [{"role": "assistant", "content": preferred}],
            "non_preferred_output": [{"role": "assistant", "content": non_preferred}],
        }
    )


DPO_ROWS = [dpo_line(q, a, "I am not sure, please ask someone else.") for q, a in ROWS] + [
    dpo_line(
        "What is the weather like today?", "Let's keep the discussion relevant to our services.", "Sunny."
    )
]


@pytest.mark.slow
def test_an_openai_dpo_script_trains_on_preference_pairs_and_chats(stack, team: OpenAI):
    started = time.monotonic()
    uploaded = team.files.create(file=training_file(DPO_ROWS), purpose="fine-tune")
    job = team.fine_tuning.jobs.create(
        training_file=uploaded.id,
        model=BASE_MODEL,
        suffix="prefs",
        seed=3,
        method={"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.2, "n_epochs": 1}}},
    )
    assert job.method.type == "dpo" and job.method.dpo.hyperparameters.beta == 0.2
    job = wait_until_finished(team, job.id)
    assert job.status == "succeeded", job.error
    assert job.fine_tuned_model == f"ft:{BASE_MODEL}:prefs:{job.id}"
    assert job.method.type == "dpo" and job.method.supervised is None
    assert job.method.dpo.hyperparameters.beta == 0.2 and job.method.dpo.hyperparameters.n_epochs == 1
    assert job.trained_tokens and job.trained_tokens > 0
    metrics = [e for e in team.fine_tuning.jobs.list_events(job.id, limit=100).data if e.type == "metrics"]
    assert metrics and metrics[0].data["train_loss"] > 0

    with open_channel(str(stack["trainer"])) as channel:
        registry = registry_pb2_grpc.RegistryServiceStub(channel)
        trained = registry.GetModel(trainer_pb2.GetModelRequest(name=job.fine_tuned_model))
    recorded = json.loads(trained.lineage.hyperparameters_json)
    assert recorded["method"] == "dpo" and recorded["dpo_beta"] == pytest.approx(0.2)

    reply = team.chat.completions.create(
        model=job.fine_tuned_model,
        messages=[{"role": "user", "content": ROWS[0][0]}],
        max_tokens=8,
        temperature=0,
    )
    assert reply.choices[0].message.content
    print(f"\nOpenAI-style DPO script: {time.monotonic() - started:.1f} s wall")


def test_dpo_refuses_a_non_positive_beta_and_a_chat_format_file_by_name(team: OpenAI):
    chat_file = team.files.create(file=training_file([chat_line(q, a) for q, a in ROWS]), purpose="fine-tune")
    for beta in (0, -0.5):
        with pytest.raises(openai.BadRequestError) as refused:
            team.fine_tuning.jobs.create(
                training_file=chat_file.id,
                model=BASE_MODEL,
                method={"type": "dpo", "dpo": {"hyperparameters": {"beta": beta}}},
            )
        assert refused.value.body["param"] == "method.dpo.hyperparameters.beta"

    job = team.fine_tuning.jobs.create(training_file=chat_file.id, model=BASE_MODEL, method={"type": "dpo"})
    assert job.method.type == "dpo" and job.method.dpo.hyperparameters.beta == "auto"
    job = wait_until_finished(team, job.id)
    assert job.status == "failed"
    assert job.error.code == "invalid_training_file" and job.error.param == "training_file"
    assert "preferred_output" in job.error.message

    mixed = DPO_ROWS[:2] + [chat_line(*ROWS[2])] + DPO_ROWS[3:]
    mixed_file = team.files.create(file=training_file(["", *mixed]), purpose="fine-tune")
    job = team.fine_tuning.jobs.create(training_file=mixed_file.id, model=BASE_MODEL, method={"type": "dpo"})
    job = wait_until_finished(team, job.id)
    assert job.status == "failed" and job.error.param == "training_file"
    assert "line 4" in job.error.message, job.error.message  # a blank first line, then the chat row

    pairs_file = team.files.create(file=training_file(DPO_ROWS), purpose="fine-tune")
    job = wait_until_finished(
        team, team.fine_tuning.jobs.create(training_file=pairs_file.id, model=BASE_MODEL).id
    )
    assert job.status == "failed" and "method dpo" in job.error.message


def test_a_chat_scoped_key_gets_403_and_another_project_404(stack, team: OpenAI):
    chat_only = client_for(stack, "team-a", ("chat",))
    with pytest.raises(openai.PermissionDeniedError) as denied:
        chat_only.fine_tuning.jobs.list()
    assert "fine-tune" in denied.value.message
    with pytest.raises(openai.PermissionDeniedError):
        chat_only.files.list()

    uploaded = team.files.create(file=training_file([chat_line(q, a) for q, a in ROWS]), purpose="fine-tune")
    job = team.fine_tuning.jobs.create(training_file=uploaded.id, model=BASE_MODEL, suffix="private")
    team.fine_tuning.jobs.cancel(job.id)
    other = client_for(stack, "team-b", ("chat", "fine-tune"))
    with pytest.raises(openai.NotFoundError):
        other.fine_tuning.jobs.retrieve(job.id)
    with pytest.raises(openai.NotFoundError):
        other.files.retrieve(uploaded.id)
    assert job.id not in [j.id for j in other.fine_tuning.jobs.list().data]
    # The same project's other keys see it.
    same_project = client_for(stack, "team-a", ("fine-tune",))
    assert same_project.fine_tuning.jobs.retrieve(job.id).status == "cancelled"


def test_pagination_with_after_and_limit_and_the_metadata_filter(stack):
    client = client_for(stack, "team-pages", ("fine-tune",))
    uploaded = client.files.create(
        file=training_file([chat_line(q, a) for q, a in ROWS]), purpose="fine-tune"
    )
    created = []
    for index in range(3):
        job = client.fine_tuning.jobs.create(
            training_file=uploaded.id, model=BASE_MODEL, metadata={"batch": "odd" if index % 2 else "even"}
        )
        client.fine_tuning.jobs.cancel(job.id)
        created.append(job.id)
    newest_first = list(reversed(created))
    first = client.fine_tuning.jobs.list(limit=2)
    assert [j.id for j in first.data] == newest_first[:2] and first.has_more
    second = client.fine_tuning.jobs.list(limit=2, after=first.data[-1].id)
    assert [j.id for j in second.data] == newest_first[2:] and not second.has_more
    assert [j.id for j in client.fine_tuning.jobs.list()] == newest_first  # the client's auto-paging
    even = client.fine_tuning.jobs.list(metadata={"batch": "even"})
    assert [j.id for j in even.data] == [created[2], created[0]]

    events = client.fine_tuning.jobs.list_events(created[0], limit=1)
    assert len(events.data) == 1 and events.has_more
    older = client.fine_tuning.jobs.list_events(created[0], limit=10, after=events.data[0].id)
    assert events.data[0].id not in [e.id for e in older.data] and older.data

    files = client.files.list(limit=1)
    assert [f.id for f in files.data] == [uploaded.id]


def several_steps_job(client: OpenAI, suffix: str) -> object:
    uploaded = client.files.create(
        file=training_file([chat_line(q, a) for q, a in ROWS]), purpose="fine-tune"
    )
    return client.fine_tuning.jobs.create(
        training_file=uploaded.id,
        model=BASE_MODEL,
        suffix=suffix,
        seed=5,
        method={"type": "supervised", "supervised": {"hyperparameters": SEVERAL_STEPS}},
    )


def wait_for(client: OpenAI, job_id: str, condition, what: str) -> object:
    deadline = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < deadline:
        job = client.fine_tuning.jobs.retrieve(job_id)
        if condition(job):
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id}: {what} within {WAIT_SECONDS} s")


def trained_a_step(client: OpenAI, job_id: str) -> object:
    """Running, with a training step done: the job as retrieved after its first metrics event is in. The
    follower records a step's estimated finish before it adds the step's event, so a job retrieved before
    the events are listed may be one step behind them (it failed a CI run that way)."""

    def stepped(_job: object) -> bool:
        events = client.fine_tuning.jobs.list_events(job_id, limit=100).data
        return any(e.type == "metrics" for e in events)

    wait_for(client, job_id, stepped, "no training step")
    return wait_for(client, job_id, lambda job: job.status == "running", "not running after a training step")


def step_losses(client: OpenAI, result_file: str) -> dict[int, float]:
    rows = list(csv.DictReader(io.StringIO(client.files.content(result_file).content.decode())))
    return {int(row["step"]): float(row["train_loss"]) for row in rows}


@pytest.fixture(scope="module")
def uninterrupted(team: OpenAI) -> object:
    """The reference: a job of several steps that nothing interrupts."""
    job = wait_until_finished(team, several_steps_job(team, "reference").id)
    assert job.status == "succeeded", job.error
    return job


@pytest.mark.slow
def test_a_job_lists_its_metrics_csv_as_a_result_file_and_its_checkpoint(team: OpenAI, uninterrupted):
    job = uninterrupted
    assert job.estimated_finish is None  # it has finished
    (result_file,) = job.result_files
    described = team.files.retrieve(result_file)
    assert described.purpose == "fine-tune-results" and described.filename == "step_metrics.csv"
    lines = team.files.content(result_file).content.decode().splitlines()
    assert lines[0] == "step,train_loss,train_accuracy,valid_loss,valid_mean_token_accuracy"
    losses = step_losses(team, result_file)
    assert sorted(losses) == list(range(1, 9)) and all(loss > 0 for loss in losses.values())
    rows = list(csv.DictReader(io.StringIO("\n".join(lines))))
    assert all(0 <= float(row["train_accuracy"]) <= 1 for row in rows)
    (checkpoint,) = team.fine_tuning.jobs.checkpoints.list(job.id).data
    assert checkpoint.step_number == 8 and checkpoint.fine_tuned_model_checkpoint == job.fine_tuned_model
    assert checkpoint.metrics.train_loss == pytest.approx(losses[8])
    assert checkpoint.metrics.train_mean_token_accuracy == pytest.approx(float(rows[-1]["train_accuracy"]))
    assert result_file in [f.id for f in team.files.list(purpose="fine-tune-results").data]


@pytest.mark.slow
def test_cancelling_a_running_job_ends_it_cancelled(team: OpenAI, uninterrupted):
    job = several_steps_job(team, "to-cancel")
    running = trained_a_step(team, job.id)
    assert running.estimated_finish and running.estimated_finish >= running.created_at
    assert team.fine_tuning.jobs.cancel(job.id).status == "cancelled"
    time.sleep(1)  # the trainer's own cancellation arrives meanwhile; the job stays as it is
    final = team.fine_tuning.jobs.retrieve(job.id)
    assert final.status == "cancelled" and final.fine_tuned_model is None and final.finished_at
    with pytest.raises(openai.BadRequestError) as again:
        team.fine_tuning.jobs.pause(job.id)
    assert "already cancelled" in again.value.message


@pytest.mark.slow
def test_a_paused_job_resumes_from_its_checkpoint_and_succeeds_with_the_same_losses(
    team: OpenAI, uninterrupted
):
    job = several_steps_job(team, "paused")
    trained_a_step(team, job.id)
    assert team.fine_tuning.jobs.pause(job.id).status in ("pausing", "paused")  # OpenAI's two states
    paused = wait_for(team, job.id, lambda j: j.status == "paused", "not paused")
    assert paused.estimated_finish is None
    time.sleep(1)
    assert team.fine_tuning.jobs.retrieve(job.id).status == "paused", "a paused job stays paused"
    assert team.fine_tuning.jobs.resume(job.id).status in ("queued", "running")
    final = wait_until_finished(team, job.id)
    assert final.status == "succeeded", final.error
    assert final.trained_tokens == uninterrupted.trained_tokens
    messages = [e.message for e in team.fine_tuning.jobs.list_events(job.id, limit=100).data]
    assert "Fine-tuning job paused at a checkpoint" in messages
    assert any(m.startswith("resumed from checkpoint") for m in messages)
    # The pause's checkpoint is a model of its own, listed after the final one and served by name.
    final_checkpoint, paused_checkpoint = team.fine_tuning.jobs.checkpoints.list(job.id).data
    assert final_checkpoint.fine_tuned_model_checkpoint == final.fine_tuned_model
    step = paused_checkpoint.step_number
    assert 0 < step < final_checkpoint.step_number
    assert paused_checkpoint.fine_tuned_model_checkpoint == f"{final.fine_tuned_model}:ckpt-step-{step}"
    reply = team.chat.completions.create(
        model=paused_checkpoint.fine_tuned_model_checkpoint,
        messages=[{"role": "user", "content": ROWS[0][0]}],
        max_tokens=4,
    )
    assert reply.choices[0].message.content is not None
    losses, reference = (
        step_losses(team, final.result_files[0]),
        step_losses(team, uninterrupted.result_files[0]),
    )
    assert paused_checkpoint.metrics.train_loss == pytest.approx(losses[step])
    assert sorted(losses) == sorted(reference)
    for step, loss in losses.items():
        assert loss == pytest.approx(reference[step], rel=1e-3), step


@pytest.mark.slow
def test_a_killed_trainer_worker_s_job_still_succeeds_with_the_same_trained_tokens(
    stack, team: OpenAI, uninterrupted
):
    workers: Workers = stack["workers"]  # type: ignore[assignment]
    job = several_steps_job(team, "killed")
    trained_a_step(team, job.id)
    for process in workers.processes:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
            process.wait()
    workers.start()  # the replacement requeues the silent job and trains it again from its last checkpoint
    final = wait_until_finished(team, job.id)
    assert final.status == "succeeded", final.error
    assert final.trained_tokens == uninterrupted.trained_tokens
    messages = [e.message for e in team.fine_tuning.jobs.list_events(job.id, limit=100).data]
    assert any(m.startswith("The training job was requeued (worker lost") for m in messages)


@pytest.mark.slow
def test_deleting_a_fine_tuned_model_is_refused_while_an_alias_points_at_it(
    stack, team: OpenAI, uninterrupted
):
    model = uninterrupted.fine_tuned_model
    reply = team.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Hi"}], max_tokens=2
    )
    assert reply.choices[0].message.content is not None
    with pytest.raises(openai.PermissionDeniedError):
        client_for(stack, "team-a", ("chat",)).models.delete(model)
    with pytest.raises(openai.NotFoundError):
        client_for(stack, "team-b", ("fine-tune",)).models.delete(model)
    with pytest.raises(openai.NotFoundError):
        team.models.delete(BASE_MODEL)  # only fine-tuned models are deleted here

    with open_channel(str(stack["trainer"])) as channel:
        registry = registry_pb2_grpc.RegistryServiceStub(channel)
        merged_model_id = registry.GetModel(trainer_pb2.GetModelRequest(name=model)).id
        promote = registry_pb2.PromoteRequest(
            model=merged_model_id, alias="openai-test-prod", force=True, reason="test", actor="test"
        )
        registry.Promote(promote)
        with pytest.raises(openai.BadRequestError) as refused:
            team.models.delete(model)
        assert refused.value.status_code == 400 and refused.value.body["param"] == "model"
        assert "openai-test-prod" in refused.value.message
        assert model in [m.id for m in team.models.list().data]

        promote.model, promote.reason = BASE_MODEL, "test: the alias moves away"
        registry.Promote(promote)
        deleted = team.models.delete(model)
        assert deleted.id == model and deleted.deleted
        assert model not in [m.id for m in team.models.list().data]
        with pytest.raises(openai.NotFoundError):
            team.models.retrieve(model)
        with pytest.raises(openai.NotFoundError):
            team.chat.completions.create(
                model=model, messages=[{"role": "user", "content": "Hi"}], max_tokens=2
            )
        with pytest.raises(grpc.RpcError) as gone:
            registry.GetModel(trainer_pb2.GetModelRequest(name=merged_model_id))
        assert gone.value.code() == grpc.StatusCode.NOT_FOUND
        (removal, *_) = registry.ListAliasHistory(registry_pb2.ListAliasHistoryRequest(alias=model)).revisions
        assert (
            removal.action == registry_pb2.ALIAS_ACTION_REMOVED
            and removal.previous_model_id == merged_model_id
        )

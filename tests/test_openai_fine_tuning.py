"""The OpenAI fine-tuning API on the gateway, driven by the official `openai` client against real services:
data and trainer over gRPC on loopback, a real trainer worker process, the real default model at tiny
settings (a few short conversations, one epoch, one optimizer step)."""

import io
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from gateway_support import loopback_gateway_settings
from openai import OpenAI

from services.inference.auth import KeyStore
from services.inference.keys import open_gateway_database

REPO_ROOT = Path(__file__).resolve().parent.parent
BASE_MODEL = "smollm2-135m-instruct"
WAIT_SECONDS = 240

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
    worker = subprocess.Popen(
        [sys.executable, "-m", "services.trainer.worker"],
        cwd=REPO_ROOT,
        env={
            **os.environ,
            "FT_TRAINER_DATA_DIR": str(data_root),
            "FT_TRAINER_WORKER_POLL_SECONDS": "0.2",
            "FT_TRAINER_HEARTBEAT_SECONDS": "0.5",
            "FT_TRAINER_TORCH_THREADS": "2",
            "FT_TRAINER_LOG_LEVEL": "WARNING",
        },
    )
    settings = loopback_gateway_settings(
        data_root / "openai-gateway",
        trainer.address,
        data_address=data_server.address,
        artifact_store_url=str(data_root / "artifacts"),
        fine_tuning_poll_seconds=0.2,
    )
    gateway = build_server(settings)
    keys = KeyStore(open_gateway_database(settings))
    yield {"url": gateway.http_url + "/v1", "keys": keys}
    gateway.stop(grace=1)
    worker.terminate()
    worker.wait(timeout=30)
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
    with pytest.raises(openai.BadRequestError) as dpo:
        team.fine_tuning.jobs.create(training_file=uploaded.id, model=BASE_MODEL, method={"type": "dpo"})
    assert dpo.value.body["param"] == "method.type"
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

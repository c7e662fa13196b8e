"""`ftctl train`: create, watch, list, pause, resume and cancel training jobs on the trainer service."""

from pathlib import Path
from typing import Any

import typer
import yaml
from rich.markup import escape

from finetune.v1 import common_pb2, trainer_pb2, trainer_pb2_grpc
from ftcommon.specs.proto_bridge import validate_spec
from ftcommon.specs.train import HYPERPARAMETERS_FIELD, Hyperparameters, TrainSpec
from ftctl.common import (
    JSON_OPTION,
    STATE_NAMES,
    addresses,
    console,
    follow_job,
    print_json,
    print_table,
    rpc_errors,
    spec_errors,
    stub,
)

app = typer.Typer(no_args_is_help=True)

STATES = {name: value for value, name in STATE_NAMES.items() if name != "unspecified"}


def trainer() -> trainer_pb2_grpc.TrainerServiceStub:
    return stub(trainer_pb2_grpc.TrainerServiceStub, addresses().trainer_address)


def _flag(name: str) -> Any:
    """A hyperparameter's flag: unset unless given, with the spec's help text and default."""
    field = Hyperparameters.model_fields[name]
    default = "" if field.default is None else f" Default: {field.default}."
    return typer.Option(None, help=f"{field.description}{default}")


def job_file_values(config: Path) -> dict[str, Any]:
    """A job file's hyperparameters: a `hyperparameters:` mapping, or the file's top-level mapping."""
    document = yaml.safe_load(config.read_text()) or {}
    if not isinstance(document, dict):
        raise typer.BadParameter("expected a mapping of hyperparameters", param_hint="--config")
    return document.get(HYPERPARAMETERS_FIELD, document)


def train_spec(
    dataset: str,
    base_model: str,
    config: Path | None,
    flags: dict[str, Any],
    display_name: str = "",
    idempotency_key: str = "",
) -> TrainSpec:
    """What `train create` asks for: the job file's values, then the flags given (None: not given) over them.
    Only what the file or a flag names counts as set; the rest is left to the trainer's defaults."""
    values = job_file_values(config) if config is not None else {}
    given = {name: value for name, value in flags.items() if value is not None}
    with spec_errors("--config" if config is not None else "flags"):
        hyperparameters = validate_spec(
            Hyperparameters, {**values, **given}, field_prefix=HYPERPARAMETERS_FIELD
        )
    with spec_errors("--dataset/--base-model"):
        return validate_spec(
            TrainSpec,
            {
                "base_model": base_model,
                "prepared_version_id": dataset,
                "hyperparameters": hyperparameters,
                "idempotency_key": idempotency_key,
                "display_name": display_name,
            },
        )


def job_row(job: trainer_pb2.TrainingJob) -> list[Any]:
    loss = job.metrics.get("loss", job.metrics.get("train_loss"))
    return [
        job.status.id,
        STATE_NAMES.get(job.status.state, "?"),
        f"{job.step}/{job.total_steps}",
        f"{loss:.4f}" if loss is not None else "",
        job.merged_model_id,
        job.display_name,
    ]


@app.command()
def create(
    dataset: str = typer.Option(..., "--dataset", help="The prepared dataset version id."),
    base_model: str = typer.Option("smollm2-135m-instruct", "--base-model", help="Model name, id or alias."),
    config: Path | None = typer.Option(None, "--config", help="A YAML job file: `hyperparameters:` mapping."),
    method: str | None = _flag("method"),
    lora_rank: int | None = _flag("lora_rank"),
    learning_rate: float | None = _flag("learning_rate"),
    epochs: float | None = _flag("epochs"),
    max_steps: int | None = _flag("max_steps"),
    batch_size: int | None = _flag("batch_size"),
    gradient_accumulation_steps: int | None = _flag("gradient_accumulation_steps"),
    num_processes: int | None = _flag("num_processes"),
    seed: int | None = _flag("seed"),
    dpo_beta: float | None = _flag("dpo_beta"),
    name: str = typer.Option("", "--name", help="A display name for the job."),
    idempotency_key: str = typer.Option("", help="Retrying with the same key returns the same job."),
    watch_progress: bool = typer.Option(False, "--watch", help="Follow the job until it ends."),
    show_json: bool = JSON_OPTION,
) -> None:
    """Queue a fine-tuning job; flags override the job file, unset values take the platform defaults."""
    flags = {
        "method": method,
        "lora_rank": lora_rank,
        "learning_rate": learning_rate,
        "epochs": epochs,
        "max_steps": max_steps,
        "batch_size": batch_size,
        "gradient_accumulation_steps": gradient_accumulation_steps,
        "num_processes": num_processes,
        "seed": seed,
        "dpo_beta": dpo_beta,
    }
    request = train_spec(dataset, base_model, config, flags, name, idempotency_key).to_request()
    with rpc_errors():
        job = trainer().CreateJob(request)
    if show_json:
        print_json(job)
    else:
        console.print(f"queued training job [bold]{job.status.id}[/bold]")
        for sentence in job.chosen_defaults:
            console.print(f"  default chosen: {escape(sentence)}")
    if watch_progress:
        follow_training(job.status.id, after_index=0, show_json=show_json)


@app.command()
def watch(
    job_id: str = typer.Argument(..., help="The training job id."),
    after_index: int = typer.Option(0, help="Only events after this index (resume a watch)."),
    show_json: bool = JSON_OPTION,
) -> None:
    """Live progress: step, loss, tokens/s and ETA, until the job ends. Exit status 1 unless it succeeded."""
    follow_training(job_id, after_index, show_json)


def follow_training(job_id: str, after_index: int, show_json: bool) -> None:
    """What `watch` and `create --watch` do; a plain function, so no typer defaults leak into it."""
    client = trainer()
    with rpc_errors():
        events = client.WatchJob(
            common_pb2.WatchRequest(id=job_id, after_index=after_index), timeout=7 * 24 * 3600
        )
        final_state = follow_job(_progress_only(events), f"training {job_id}", show_json)
        job = client.GetJob(trainer_pb2.GetJobRequest(id=job_id))
    if not show_json:
        console.print(
            f"{job_id}: {STATE_NAMES.get(job.status.state, '?')}"
            + (f" ({escape(job.status.error)})" if job.status.error else "")
        )
        if job.merged_model_id:
            console.print(f"merged model: {job.merged_model_id}   adapter: {job.adapter_model_id}")
    if (final_state or job.status.state) != common_pb2.JOB_STATE_SUCCEEDED:
        raise typer.Exit(1)


def _progress_only(events: Any) -> Any:
    """Keeps the step metrics that matter on one line: step, loss, tokens/s, ETA."""
    shown = ("step", "loss", "validation_loss", "tokens_per_second", "eta_seconds")
    for event in events:
        if event.metrics:
            kept = {k: event.metrics[k] for k in shown if k in event.metrics}
            event.metrics.clear()
            event.metrics.update(kept)
        yield event


@app.command("list")
def list_jobs(
    state: str = typer.Option("", help=f"Only jobs in this state: {', '.join(STATES)}."),
    page_size: int = typer.Option(50),
    page_token: str = typer.Option(""),
    show_json: bool = JSON_OPTION,
) -> None:
    """Training jobs, newest first."""
    if state and state not in STATES:
        raise typer.BadParameter(f"one of {', '.join(STATES)}", param_hint="--state")
    request = trainer_pb2.ListJobsRequest(
        state=STATES.get(state, 0), page=common_pb2.PageRequest(page_size=page_size, page_token=page_token)
    )
    with rpc_errors():
        response = trainer().ListJobs(request)
    if show_json:
        print_json(response)
        return
    print_table(
        "training jobs", ["id", "state", "step", "loss", "merged model", "name"], map(job_row, response.jobs)
    )
    if response.next_page_token:
        console.print(f"more: --page-token {response.next_page_token}")


@app.command()
def show(job_id: str, show_json: bool = JSON_OPTION) -> None:
    """One job with its hyperparameters and metrics."""
    with rpc_errors():
        job = trainer().GetJob(trainer_pb2.GetJobRequest(id=job_id))
    if show_json:
        print_json(job)
    else:
        print_table(job_id, ["id", "state", "step", "loss", "merged model", "name"], [job_row(job)])


@app.command()
def cancel(job_id: str, show_json: bool = JSON_OPTION) -> None:
    """Cancel a job: a queued one at once, a running one as soon as its worker stops the job process."""
    with rpc_errors():
        job = trainer().CancelJob(trainer_pb2.GetJobRequest(id=job_id))
    if show_json:
        print_json(job)
    else:
        console.print(f"{job_id}: {STATE_NAMES.get(job.status.state, '?')}")


@app.command()
def pause(job_id: str, show_json: bool = JSON_OPTION) -> None:
    """Pause a job: its worker checkpoints at the next step and the job waits, PAUSED, until resumed."""
    with rpc_errors():
        job = trainer().PauseJob(trainer_pb2.GetJobRequest(id=job_id))
    if show_json:
        print_json(job)
    else:
        console.print(
            f"{job_id}: {STATE_NAMES.get(job.status.state, '?')} (pause asked; `ftctl train resume`)"
        )


@app.command()
def resume(job_id: str, show_json: bool = JSON_OPTION) -> None:
    """Resume a paused job from the checkpoint it paused at (or withdraw a pause not yet taken)."""
    with rpc_errors():
        job = trainer().ResumeJob(trainer_pb2.GetJobRequest(id=job_id))
    if show_json:
        print_json(job)
    else:
        console.print(f"{job_id}: {STATE_NAMES.get(job.status.state, '?')}")


@app.command()
def checkpoints(job_id: str, show_json: bool = JSON_OPTION) -> None:
    """A job's checkpoints (adapter, optimizer, scheduler, RNG states and data position)."""
    with rpc_errors():
        response = trainer().ListCheckpoints(trainer_pb2.GetJobRequest(id=job_id))
    if show_json:
        print_json(response)
        return
    rows = [
        [c.id, c.step, c.artifact.uri, c.artifact.size_bytes, c.created_at.ToDatetime()]
        for c in response.checkpoints
    ]
    print_table(f"checkpoints of {job_id}", ["id", "step", "artifact", "bytes", "created"], rows)

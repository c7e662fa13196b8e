"""`ftctl models`: the model registry (base models, adapters, merged models) and its aliases."""

from pathlib import Path

import typer
from rich.markup import escape

from finetune.v1 import common_pb2, trainer_pb2, trainer_pb2_grpc
from ftctl.alias_history import history, rollback
from ftctl.common import JSON_OPTION, addresses, console, print_json, print_table, rpc_errors, stub
from ftctl.model_export import export_model
from ftctl.promote import promote

app = typer.Typer(no_args_is_help=True)
app.command("promote")(promote)
app.command("history")(history)
app.command("rollback")(rollback)
app.command("export")(export_model)

KINDS = {name.removeprefix("MODEL_KIND_").lower(): value for name, value in trainer_pb2.ModelKind.items()}
KIND_NAMES = {value: name for name, value in KINDS.items()}


def trainer() -> trainer_pb2_grpc.TrainerServiceStub:
    return stub(trainer_pb2_grpc.TrainerServiceStub, addresses().trainer_address)


@app.command("list")
def list_models(
    kind: str = typer.Option("", help="base | adapter | merged"),
    page_size: int = typer.Option(50),
    page_token: str = typer.Option(""),
    show_json: bool = JSON_OPTION,
) -> None:
    """Registered models with their lineage."""
    if kind and kind not in KINDS:
        raise typer.BadParameter("one of base, adapter, merged", param_hint="--kind")
    request = trainer_pb2.ListModelsRequest(
        kind=KINDS.get(kind, 0), page=common_pb2.PageRequest(page_size=page_size, page_token=page_token)
    )
    with rpc_errors():
        response = trainer().ListModels(request)
    if show_json:
        print_json(response)
        return
    rows = [
        [
            m.id,
            m.name,
            KIND_NAMES.get(m.kind, "?"),
            ",".join(m.aliases),
            m.lineage.base_model_id,
            m.lineage.prepared_version_id,
            m.lineage.job_id,
            f"{m.metrics['validation_loss']:.4f}" if "validation_loss" in m.metrics else "",
        ]
        for m in response.models
    ]
    columns = ["id", "name", "kind", "aliases", "base model", "dataset version", "job", "val loss"]
    print_table("models", columns, rows)
    if response.next_page_token:
        console.print(f"more: --page-token {response.next_page_token}")


@app.command()
def show(model: str = typer.Argument(..., help="Id, name or alias."), show_json: bool = JSON_OPTION) -> None:
    """One model: artifact, sha256, lineage, metrics, template."""
    with rpc_errors():
        record = trainer().GetModel(trainer_pb2.GetModelRequest(name=model))
    if show_json:
        print_json(record)
        return
    rows = [
        ["id", record.id],
        ["name", record.name],
        ["kind", KIND_NAMES.get(record.kind, "?")],
        ["aliases", ", ".join(record.aliases)],
        ["artifact", record.artifact.uri],
        ["sha256", record.artifact.sha256],
        ["parameters", f"{record.parameters:,}"],
        ["eos token", record.eos_token],
        ["max context", record.max_context],
    ]
    rows += [[f"lineage.{field.name}", value] for field, value in record.lineage.ListFields()]
    rows += [[f"metrics.{name}", f"{value:.6g}"] for name, value in sorted(record.metrics.items())]
    print_table(record.name, ["field", "value"], rows)


@app.command()
def register(
    path: Path = typer.Argument(..., help="A local Hugging Face model folder the trainer service can read."),
    name: str = typer.Option(..., "--name", help="The registry name."),
    show_json: bool = JSON_OPTION,
) -> None:
    """Register a base model folder (weights, tokenizer with chat template)."""
    with rpc_errors():
        record = trainer().RegisterBaseModel(
            trainer_pb2.RegisterBaseModelRequest(name=name, path=str(path.resolve())), timeout=600
        )
    if show_json:
        print_json(record)
    else:
        console.print(f"registered {escape(record.name)} ({record.id}, sha256 {record.artifact.sha256[:12]})")

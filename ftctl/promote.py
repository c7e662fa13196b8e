"""`ftctl models promote MODEL --alias prod --if-eval-passes RUN`: ask the registry to point an alias at a model.

The registry decides, not this command: RegistryService.Promote checks the run on the server (it succeeded,
evaluated MODEL against the alias's current model, on the named data if given, and passed it). `--force`
with `--reason` promotes without that evidence, and the history keeps the reason. Mounted by ftctl/models.py.
"""

import getpass
import socket

import typer
from rich.markup import escape

from finetune.v1 import eval_pb2, registry_pb2, registry_pb2_grpc
from ftctl.common import JSON_OPTION, addresses, console, print_json, rpc_errors, stub


def registry() -> registry_pb2_grpc.RegistryServiceStub:
    """The registry is served in the trainer process, at its address."""
    return stub(registry_pb2_grpc.RegistryServiceStub, addresses().trainer_address)


def actor() -> str:
    """Who asks, as the alias history records it."""
    return f"{getpass.getuser()}@{socket.gethostname()}"


def promote(
    model: str = typer.Argument(..., help="The model to promote: id, name or alias."),
    alias: str = typer.Option("prod", "--alias", help="The alias to point at the model."),
    if_eval_passes: str = typer.Option(
        "",
        "--if-eval-passes",
        help="The evaluation run that is the evidence: it must have passed this model against the alias's "
        "current model (for a new alias: against the model's base).",
    ),
    prepared_version: str = typer.Option(
        "", "--prepared-version", help="Require the run to have evaluated on this prepared version."
    ),
    split: str = typer.Option(
        "test", "--split", help="With --prepared-version: the split it must have used."
    ),
    dataset: str = typer.Option("", "--dataset", help="Require the run to have evaluated on this dataset."),
    force: bool = typer.Option(False, "--force", help="Promote without (or despite) the evidence."),
    reason: str = typer.Option("", "--reason", help="Why; required with --force, kept in the alias history."),
    show_json: bool = JSON_OPTION,
) -> None:
    """Point ALIAS at MODEL if the registry accepts the evaluation run as evidence (or --force --reason)."""
    if prepared_version and dataset:
        raise typer.BadParameter("name one of --prepared-version and --dataset", param_hint="--dataset")
    request = registry_pb2.PromoteRequest(
        model=model, alias=alias, eval_run_id=if_eval_passes, force=force, reason=reason, actor=actor()
    )
    if prepared_version:
        request.data.CopyFrom(eval_pb2.EvalData(prepared_version_id=prepared_version, split=split))
    elif dataset:
        request.data.CopyFrom(eval_pb2.EvalData(dataset_id=dataset))
    with rpc_errors():
        revision = registry().Promote(request)
    if show_json:
        print_json(revision)
        return
    console.print(
        f"[green]{escape(alias)}[/green] -> {revision.model_id}, revision {revision.revision}"
        + (" [yellow](forced)[/yellow]" if revision.action == registry_pb2.ALIAS_ACTION_FORCE else "")
    )
    if revision.gate_refusal:
        console.print(f"  the gate would have refused: {escape(revision.gate_refusal)}")

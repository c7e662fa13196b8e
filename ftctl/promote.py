"""`ftctl models promote MODEL --alias prod --if-eval-passes RUN`: point an alias at a model, gated by a verdict.

Mounted by ftctl/models.py as `app.command("promote")(promote)`.
"""

import json

import typer
from rich.markup import escape

from finetune.v1 import eval_pb2, eval_pb2_grpc, trainer_pb2, trainer_pb2_grpc
from ftctl.common import JSON_OPTION, addresses, console, print_json, rpc_errors, stub


def promote(
    model: str = typer.Argument(..., help="The model to promote: id, name or alias."),
    alias: str = typer.Option("prod", "--alias", help="The alias to point at the model."),
    if_eval_passes: str = typer.Option(
        "", "--if-eval-passes", help="An evaluation run whose verdict for this model must be PASS."
    ),
    show_json: bool = JSON_OPTION,
) -> None:
    """Point ALIAS at MODEL; with --if-eval-passes only when that run passed this model."""
    trainer = stub(trainer_pb2_grpc.TrainerServiceStub, addresses().trainer_address)
    with rpc_errors():
        resolved = trainer.GetModel(trainer_pb2.GetModelRequest(name=model))
        if if_eval_passes:
            evaluation = stub(eval_pb2_grpc.EvalServiceStub, addresses().eval_address)
            report = json.loads(evaluation.GetReport(eval_pb2.GetRunRequest(id=if_eval_passes)).report_json)
            _require_pass(report, resolved.id, if_eval_passes)
        result = trainer.SetAlias(trainer_pb2.SetAliasRequest(alias=alias, model=resolved.id))
    if show_json:
        print_json(result)
    else:
        console.print(
            f"[green]{escape(alias)}[/green] -> {escape(resolved.name)} ({resolved.id}), revision {result.revision}"
        )


def _require_pass(report: dict, model_id: str, run_id: str) -> None:
    """The run must have evaluated this model as a candidate (not the baseline) and passed it."""
    candidates = [m["label"] for m in report["models"][1:] if m["model_id"] == model_id]
    if not candidates:
        console.print(f"[red]refused[/red]: run {run_id} did not evaluate model {model_id} as a candidate")
        raise typer.Exit(1)
    verdict = report["verdicts"][candidates[-1]]
    if verdict["verdict"] != "PASS":
        console.print(
            f"[red]refused[/red]: run {run_id} verdict for {candidates[-1]} is {verdict['verdict']}"
        )
        for reason in verdict["reasons"]:
            console.print(f"  - {escape(reason)}")
        raise typer.Exit(1)

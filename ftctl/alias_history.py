"""`ftctl models history ALIAS` and `ftctl models rollback ALIAS REVISION`: an alias's revisions, and a return
to one of them. Mounted by ftctl/models.py."""

import typer
from rich.markup import escape

from finetune.v1 import common_pb2, registry_pb2
from ftctl.common import JSON_OPTION, console, print_json, print_table, rpc_errors
from ftctl.promote import actor, registry

ACTION_NAMES = {v: k.removeprefix("ALIAS_ACTION_").lower() for k, v in registry_pb2.AliasAction.items()}


def history(
    alias: str = typer.Argument(..., help="The alias, e.g. prod."),
    page_size: int = typer.Option(50),
    page_token: str = typer.Option(""),
    show_json: bool = JSON_OPTION,
) -> None:
    """Every move of ALIAS, newest first: who, when, why, and the evaluation run that was the evidence."""
    request = registry_pb2.ListAliasHistoryRequest(
        alias=alias, page=common_pb2.PageRequest(page_size=page_size, page_token=page_token)
    )
    with rpc_errors():
        response = registry().ListAliasHistory(request)
    if show_json:
        print_json(response)
        return
    rows = [
        [
            r.revision,
            r.created_at.ToDatetime().isoformat(timespec="seconds"),
            r.model_id,
            ACTION_NAMES.get(r.action, "?")
            + (f" to {r.rolled_back_to}" if r.action == registry_pb2.ALIAS_ACTION_ROLLBACK else ""),
            r.actor,
            r.reason,
            r.evidence.eval_run_id,
            r.gate_refusal,
        ]
        for r in response.revisions
    ]
    columns = ["revision", "when", "model", "action", "who", "why", "eval run", "gate refused"]
    print_table(f"{alias} history", columns, rows)
    if response.next_page_token:
        console.print(f"more: --page-token {response.next_page_token}")


def rollback(
    alias: str = typer.Argument(..., help="The alias, e.g. prod."),
    revision: int = typer.Argument(..., help="The revision to return to (`ftctl models history ALIAS`)."),
    reason: str = typer.Option("", "--reason", help="Why; kept in the alias history."),
    show_json: bool = JSON_OPTION,
) -> None:
    """Point ALIAS back at the model it had at REVISION; the move is a new revision."""
    request = registry_pb2.RollbackRequest(alias=alias, revision=revision, reason=reason, actor=actor())
    with rpc_errors():
        result = registry().Rollback(request)
    if show_json:
        print_json(result)
    else:
        console.print(
            f"[green]{escape(alias)}[/green] -> {result.model_id} (revision {result.revision}, "
            f"back to revision {revision})"
        )

"""Evaluation pages: runs (paged) with the create form, one run's report rendered in the page with the
side-by-side table's filters as query parameters, and the comparison of two runs."""

from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import RedirectResponse, Response

from finetune.v1 import eval_pb2
from ftcommon.settings import DEFAULT_BASE_MODEL_NAME
from services.console.pages import enum_name, render
from services.console.peers import ConsoleError
from services.console.protocol_evaluations import SPLITS, EvalForm
from services.console.security import Admin, SignedIn
from services.console.serving_evaluations import OUTCOMES, EvaluationsServing, ExampleFilter
from services.console.serving_models import ModelsServing
from services.console.serving_training import TrainingServing
from services.console.state import Console

router = APIRouter(prefix="/evaluations")


def serving(console: Console) -> EvaluationsServing:
    return EvaluationsServing(console.peers, console.settings.page_size)


def verdict_name(verdict: int) -> str:
    return enum_name(verdict, eval_pb2.Verdict, "VERDICT_") if verdict else ""


@router.get("")
def list_runs(
    request: Request,
    console: Console,
    session: SignedIn,
    page_token: str = "",
    prepared_version_id: str = "",
    candidate: str = "",
) -> Response:
    page = serving(console).page(page_token)
    context: dict[str, object] = {
        "page": page,
        "page_token": page_token,
        "verdict_name": verdict_name,
        "selected_version": prepared_version_id,
        "selected_candidate": candidate,
        "default_base": DEFAULT_BASE_MODEL_NAME,  # the baseline when no `prod` exists yet
        "splits": SPLITS,
    }
    if session.operator.is_admin:
        # A model id from a job's page is offered too, beside the names and aliases.
        context["choices"] = sorted(
            {*ModelsServing(console.peers, 200).choices(), *([candidate] if candidate else [])}
        )
        context["versions"] = TrainingServing(console.peers, 200, 0).prepared_versions()
    return render(request, "evaluations.html", context)


@router.post("")
def create_run(console: Console, _: Admin, form: Annotated[EvalForm, Form()]) -> Response:
    run = serving(console).create(form)
    return RedirectResponse(f"/evaluations/{run.status.id}", status_code=303)


@router.get("/compare")
def compare_runs(request: Request, console: Console, _: SignedIn, a: str = "", b: str = "") -> Response:
    if not a.strip() or not b.strip():
        raise ConsoleError("name two runs to compare (fields 'a' and 'b')", 400)
    comparison = serving(console).compare([a.strip(), b.strip()])
    return render(
        request,
        "evaluation_compare.html",
        {"comparison": comparison, "verdict_name": verdict_name},
    )


@router.get("/{run_id}")
def run_report(
    request: Request,
    console: Console,
    _: SignedIn,
    run_id: str,
    candidate: str = "",
    category: str = "",
    model: str = "",
    outcome: str = "",
) -> Response:
    if outcome and outcome not in OUTCOMES:
        raise ConsoleError(f"field 'outcome': one of {', '.join(OUTCOMES)}, not {outcome!r}", 400)
    runs = serving(console)
    run = runs.run(run_id)
    view = runs.report(run, ExampleFilter(candidate, category, model, outcome))
    return render(
        request,
        "evaluation.html",
        {
            "run": run,
            "view": view,
            "chosen": {"candidate": candidate, "category": category, "model": model, "outcome": outcome},
            "outcomes": OUTCOMES,
            "verdict_name": verdict_name,
            "command": EvalForm.from_request(run.request).command(),
        },
    )

"""Training pages: jobs list, create form, one job with its live chart, cancel, and the event relay."""

from typing import Annotated

from fastapi import APIRouter, Header, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, RedirectResponse, Response, StreamingResponse

from ftcommon.settings import DEFAULT_BASE_MODEL_NAME
from ftcommon.specs.train import Hyperparameters
from services.console.pages import render
from services.console.protocol import TERMINAL_STATES
from services.console.security import Admin, SignedIn
from services.console.serving_training import TrainingServing
from services.console.spec_forms import TRAIN_COMMON, fields_of, train_equivalents, train_spec
from services.console.state import Console

router = APIRouter(prefix="/jobs")


def serving(console: Console) -> TrainingServing:
    settings = console.settings
    return TrainingServing(console.peers, settings.page_size, settings.watch_timeout_seconds)


@router.get("")
def list_jobs(request: Request, console: Console, _: SignedIn, page_token: str = "") -> Response:
    return render(request, "jobs.html", {"page": serving(console).page(page_token), "page_token": page_token})


@router.get("/new")
def new_job(request: Request, console: Console, _: SignedIn, prepared_version_id: str = "") -> Response:
    versions = serving(console).prepared_versions()
    chosen = prepared_version_id or (versions[0].id if versions else "")
    defaults = {"base_model": DEFAULT_BASE_MODEL_NAME, "prepared_version_id": chosen}
    return render(
        request,
        "job_new.html",
        {
            "versions": versions,
            "selected": prepared_version_id,
            "base_model": DEFAULT_BASE_MODEL_NAME,
            "fields": fields_of(Hyperparameters, set(), TRAIN_COMMON),
            "train_equivalents": train_equivalents(train_spec(defaults)) if chosen else None,
        },
    )


@router.get("/new/equivalents")
def job_equivalents(request: Request, _: SignedIn) -> JSONResponse:
    """The command and YAML of the form as filled so far (the page asks as a person types)."""
    shown = train_equivalents(train_spec(request.query_params))
    return JSONResponse({"command": shown.command, "yaml": shown.yaml})


@router.post("")
async def create_job(request: Request, console: Console, _: Admin) -> Response:
    spec = train_spec(await request.form())  # type: ignore[arg-type]
    job = await run_in_threadpool(serving(console).create, spec)
    return RedirectResponse(f"/jobs/{job.status.id}", status_code=303)


@router.get("/{job_id}")
def job_page(request: Request, console: Console, _: SignedIn, job_id: str) -> Response:
    jobs = serving(console)
    job = jobs.job(job_id)
    return render(
        request,
        "job.html",
        {
            "job": job,
            "checkpoints": jobs.checkpoints(job_id),
            "finished": job.status.state in TERMINAL_STATES,
        },
    )


@router.post("/{job_id}/cancel")
def cancel_job(console: Console, _: Admin, job_id: str) -> Response:
    serving(console).cancel(job_id)
    return RedirectResponse(f"/jobs/{job_id}", status_code=303)


@router.get("/{job_id}/events")
def job_events(
    console: Console,
    _: SignedIn,
    job_id: str,
    after: int = 0,
    last_event_id: Annotated[int | None, Header()] = None,
) -> StreamingResponse:
    # EventSource resends the last id it saw when it reconnects; a fresh page starts from the beginning.
    after_index = last_event_id if last_event_id is not None else after
    return StreamingResponse(
        serving(console).events(job_id, after_index),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )

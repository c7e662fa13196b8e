"""Dataset pages: the list, uploads (multipart, streamed on to DataService.UploadDataset), the validation
report, and the prepare form."""

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from starlette.datastructures import UploadFile

from finetune.v1 import data_pb2
from ftcommon.settings import DEFAULT_BASE_MODEL_NAME
from ftcommon.specs.prepare import PrepareSpec
from services.console.pages import enum_name, render
from services.console.peers import ConsoleError
from services.console.security import Admin, SignedIn
from services.console.serving_datasets import DatasetsServing
from services.console.spec_forms import (
    PREPARE_COMMON,
    PREPARE_OWN_INPUTS,
    fields_of,
    prepare_equivalents,
    prepare_spec,
)
from services.console.state import Console

router = APIRouter(prefix="/datasets")


def serving(console: Console) -> DatasetsServing:
    settings = console.settings
    return DatasetsServing(console.peers, settings.page_size, settings.max_upload_bytes)


@router.get("")
def list_datasets(request: Request, console: Console, _: SignedIn, page_token: str = "") -> Response:
    page = serving(console).page(page_token)
    return render(request, "datasets.html", {"page": page, "page_token": page_token})


@router.post("/upload")
async def upload_dataset(request: Request, console: Console, _: Admin) -> Response:
    declared = int(request.headers.get("content-length") or 0)
    if declared > console.settings.max_upload_bytes + 64 * 1024:
        raise ConsoleError(
            f"the file is over the upload limit of {console.settings.max_upload_bytes:,} bytes", 413
        )
    async with request.form(max_files=1, max_fields=4) as form:
        upload = form.get("file")
        if not isinstance(upload, UploadFile) or not upload.filename:
            raise ConsoleError("choose a file to upload (field 'file')", 400)
        name = str(form.get("name") or "")
        dataset = await run_in_threadpool(serving(console).upload, upload.filename, name, upload.file)
    return JSONResponse({"id": dataset.id, "url": f"/datasets/{dataset.id}"})


@router.get("/{dataset_id}")
def dataset_report(request: Request, console: Console, _: SignedIn, dataset_id: str) -> Response:
    report = serving(console).report(dataset_id)
    return render(
        request,
        "dataset.html",
        {
            "item": report,
            "schema": enum_name(report.report.schema, data_pb2.DatasetSchema, "DATASET_SCHEMA_"),
            "base_model": DEFAULT_BASE_MODEL_NAME,
            "prepare_fields": fields_of(PrepareSpec, PREPARE_OWN_INPUTS, PREPARE_COMMON),
            "prepare_equivalents": prepare_equivalents(
                prepare_spec(dataset_id, {"base_model": DEFAULT_BASE_MODEL_NAME})
            ),
        },
    )


@router.get("/{dataset_id}/prepare/equivalents")
def prepare_equivalents_of(request: Request, _: SignedIn, dataset_id: str) -> JSONResponse:
    """The command and YAML of the form as filled so far (the page asks as a person types)."""
    shown = prepare_equivalents(prepare_spec(dataset_id, request.query_params))
    return JSONResponse({"command": shown.command, "yaml": shown.yaml})


@router.post("/{dataset_id}/prepare")
async def prepare_dataset(request: Request, console: Console, _: Admin, dataset_id: str) -> Response:
    spec = prepare_spec(dataset_id, await request.form())  # type: ignore[arg-type]
    job = await run_in_threadpool(serving(console).prepare, spec)
    return render(
        request,
        "prepared.html",
        {"job": job, "dataset_id": dataset_id, "prepared_equivalents": prepare_equivalents(spec)},
    )

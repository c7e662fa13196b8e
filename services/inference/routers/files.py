"""/v1/files: upload (multipart), list, retrieve, content, delete; keys with the fine-tune scope."""

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse
from starlette.datastructures import UploadFile

from ftcommon.errors import InvalidArgument
from services.inference.fine_tuning_protocol import FileDeleted, FileList, FileObject
from services.inference.routers.security import FineTuneKey, project_of, require_fine_tune
from services.inference.state import Gateway

router = APIRouter(prefix="/v1/files", dependencies=[Depends(require_fine_tune)])


@router.post("")
async def upload_file(request: Request, key: FineTuneKey, state: Gateway) -> FileObject:
    # Parsed here rather than by FastAPI's Form(): the parser spools the file to disk as it arrives, and
    # the size limit (enforced while the body streams in) surfaces as a 413 instead of a parse error.
    async with request.form(max_files=1, max_fields=8) as form:
        upload, purpose = form.get("file"), form.get("purpose")
        if not isinstance(upload, UploadFile):
            raise InvalidArgument("is required: send the file as multipart form field 'file'", field="file")
        if not isinstance(purpose, str):
            raise InvalidArgument("is required (fine-tune)", field="purpose")
        size = upload.size if upload.size is not None else 0
        return await run_in_threadpool(
            state.files.upload, project_of(key), upload.filename or "upload.jsonl", purpose, upload.file, size
        )


# Plain `def` routes: the database and gRPC calls block, so FastAPI runs them in its thread pool.
@router.get("")
def list_files(
    key: FineTuneKey,
    state: Gateway,
    purpose: str | None = None,
    after: str | None = None,
    limit: Annotated[int, Query()] = 10_000,
    order: str = "desc",
) -> FileList:
    return state.files.list(project_of(key), purpose, after, limit, order)


@router.get("/{file_id}")
def retrieve_file(file_id: str, key: FineTuneKey, state: Gateway) -> FileObject:
    return state.files.get(project_of(key), file_id)


@router.get("/{file_id}/content")
def file_content(file_id: str, key: FineTuneKey, state: Gateway) -> StreamingResponse:
    return StreamingResponse(
        state.files.content(project_of(key), file_id), media_type="application/octet-stream"
    )


@router.delete("/{file_id}")
def delete_file(file_id: str, key: FineTuneKey, state: Gateway) -> FileDeleted:
    return state.files.delete(project_of(key), file_id)

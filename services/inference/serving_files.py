"""/v1/files: OpenAI files as datasets of the data service, streamed to DataService.UploadDataset.

A fine-tune file is ingested in OpenAI's chat format (JSONL rows of `messages`), or in OpenAI's DPO format
(`input`, `preferred_output`, `non_preferred_output`) when its first row has those keys; rows the data
service rejects stay in its validation report, and a job that uses the file fails naming the first one, as
on OpenAI (the upload itself succeeds).
"""

import json
from collections.abc import Iterator
from typing import BinaryIO

import grpc

from finetune.v1 import data_pb2, data_pb2_grpc
from ftcommon.artifacts import ArtifactStore
from ftcommon.errors import FailedPrecondition, InvalidArgument, NotFound
from services.inference.config import InferenceSettings
from services.inference.fine_tuning_protocol import FileDeleted, FileList, FileObject
from services.inference.fine_tuning_store import FileRecord, FineTuningRecords, epoch_seconds
from services.inference.peer_errors import peer_error

PURPOSES = ("fine-tune",)
_CHUNK_BYTES = 1 << 20
MAX_LIST_LIMIT = 10_000


class OpenAIServingFiles:
    def __init__(
        self,
        settings: InferenceSettings,
        data: data_pb2_grpc.DataServiceStub,
        store: ArtifactStore,
        records: FineTuningRecords,
    ) -> None:
        self.settings = settings
        self.data = data
        self.store = store
        self.records = records

    def upload(self, project: str, filename: str, purpose: str, content: BinaryIO, size: int) -> FileObject:
        if purpose not in PURPOSES:
            raise InvalidArgument(
                f"'{purpose}' is not a supported purpose; this platform accepts {', '.join(PURPOSES)}",
                field="purpose",
            )
        head = _first_row(content)
        metadata = data_pb2.UploadMetadata(
            filename=filename,
            size_bytes=size,
            options=data_pb2.IngestOptions(
                name=filename,
                format=data_pb2.DATASET_FORMAT_JSONL,
                schema=_schema_of(head),
            ),
        )
        try:
            dataset = self.data.UploadDataset(
                _upload_messages(metadata, head, content), timeout=self.settings.rpc_timeout_seconds
            )
        except grpc.RpcError as err:
            raise _as_file_error(peer_error(err, "data service")) from None
        return _file_object(self.records.add_file(project, dataset.id, filename, purpose, size))

    def list(self, project: str, purpose: str | None, after: str | None, limit: int, order: str) -> FileList:
        if not 1 <= limit <= MAX_LIST_LIMIT:
            raise InvalidArgument(f"must be between 1 and {MAX_LIST_LIMIT}", field="limit")
        if order not in ("asc", "desc"):
            raise InvalidArgument("must be 'asc' or 'desc'", field="order")
        records, has_more = self.records.list_files(project, purpose, after, limit, order == "desc")
        data = [_file_object(r) for r in records]
        return FileList(
            data=data,
            has_more=has_more,
            first_id=data[0].id if data else None,
            last_id=data[-1].id if data else None,
        )

    def get(self, project: str, file_id: str) -> FileObject:
        return _file_object(self.records.get_file(project, file_id))

    def content(self, project: str, file_id: str) -> Iterator[bytes]:
        """The bytes as uploaded (or as the gateway wrote them), read from the artifact store in chunks."""
        record = self.records.get_file(project, file_id)
        handle = self.store.open(record.artifact_uri or self._dataset(record).raw.uri, "rb")

        def chunks() -> Iterator[bytes]:
            with handle:
                while chunk := handle.read(_CHUNK_BYTES):
                    yield chunk

        return chunks()

    def delete(self, project: str, file_id: str) -> FileDeleted:
        record = self.records.get_file(project, file_id)
        if users := self.records.jobs_validating_file(file_id):
            raise FailedPrecondition(
                f"the file is being validated for fine-tuning job {users[0]}; delete it once the job has "
                "left validating_files",
                field="file_id",
            )
        if record.dataset_id:  # a result file is only an artifact (immutable, content-addressed)
            try:
                self.data.DeleteDataset(
                    data_pb2.DeleteDatasetRequest(id=record.dataset_id),
                    timeout=self.settings.rpc_timeout_seconds,
                )
            except grpc.RpcError as err:
                error = peer_error(err, "data service")
                if not isinstance(error, NotFound):  # already gone there: finish forgetting it here
                    raise error from None
        self.records.delete_file(project, file_id)
        return FileDeleted(id=file_id)

    def _dataset(self, record: FileRecord) -> data_pb2.Dataset:
        try:
            return self.data.GetDataset(
                data_pb2.GetDatasetRequest(id=record.dataset_id), timeout=self.settings.rpc_timeout_seconds
            )
        except grpc.RpcError as err:
            raise peer_error(err, "data service") from None


def _first_row(content: BinaryIO) -> bytes:
    """The file's bytes up to and including its first non-blank line (read, so they are sent first)."""
    head = b""
    while line := content.readline():
        head += line
        if line.strip():
            break
    return head


def _schema_of(head: bytes) -> "data_pb2.DatasetSchema.ValueType":
    """OpenAI's DPO format by the first row's keys, else its chat format. Every other row is held to the
    same schema by the data service's validation, so a file mixing the two fails naming the line."""
    try:
        first = json.loads(head.decode("utf-8-sig"))
    except (UnicodeDecodeError, ValueError):
        return data_pb2.DATASET_SCHEMA_MESSAGES  # the data service names the line that is not JSON
    if isinstance(first, dict) and {"input", "preferred_output"} <= first.keys():
        return data_pb2.DATASET_SCHEMA_OPENAI_PREFERENCE
    return data_pb2.DATASET_SCHEMA_MESSAGES


def _upload_messages(
    metadata: data_pb2.UploadMetadata, head: bytes, content: BinaryIO
) -> Iterator[data_pb2.UploadDatasetRequest]:
    yield data_pb2.UploadDatasetRequest(metadata=metadata)
    if head:
        yield data_pb2.UploadDatasetRequest(chunk=head)
    while chunk := content.read(_CHUNK_BYTES):
        yield data_pb2.UploadDatasetRequest(chunk=chunk)


def _as_file_error(error: Exception) -> Exception:
    """The data service names its own request fields; to an OpenAI caller they are all about `file`."""
    if isinstance(error, InvalidArgument):
        return InvalidArgument(f"the file is not a usable fine-tuning file: {error.message}", field="file")
    return error


def _file_object(record: FileRecord) -> FileObject:
    return FileObject(
        id=record.id,
        bytes=record.bytes,
        created_at=epoch_seconds(record.created_at) or 0,
        filename=record.filename,
        purpose=record.purpose,
    )

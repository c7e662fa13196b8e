"""gRPC DataService: datasets (upload, register, inspect, delete) and prepare jobs with their versions."""

import hashlib
import json
from collections.abc import Iterator

import grpc

from finetune.v1 import common_pb2, data_pb2, data_pb2_grpc
from ftcommon.artifacts import ArtifactStore
from ftcommon.errors import InvalidArgument, NotFound
from ftcommon.job_runtime import JobRuntime
from ftcommon.jobs import Job, JobStore
from ftcommon.pagination import next_page_token, page_bounds
from ftcommon.prepared_layout import split_file
from ftcommon.protoconv import artifact_ref, job_event, job_status, timestamp
from ftcommon.specs.prepare import PrepareSpec
from services.data.base_models import BaseModel, BaseModels
from services.data.catalog import Catalog, DatasetRecord, VersionRecord
from services.data.config import DataSettings
from services.data.formats import FileFormat
from services.data.generate_jobs import GenerateJobs
from services.data.ingest import IngestOptions
from services.data.pii import PiiAllowList, refuse_remaining_pii
from services.data.prepare import (
    SPEC_KEY,
    check_pairs_request,
    check_refusal_pairs_request,
    fit_to_model,
    load_conversations,
    request_from_json,
    stored_request,
    version_id,
)
from services.data.registration import register_dataset
from services.data.schemas import PREFERENCE_SCHEMAS, Schema
from services.data.source_reader import read_source
from services.data.splitting import SPLITS
from services.data.worker import PREPARE_KIND

COUNT_FIELDS = data_pb2.ReportCounts.DESCRIPTOR.fields_by_name


def dataset_message(record: DatasetRecord) -> data_pb2.Dataset:
    return data_pb2.Dataset(
        id=record.id,
        name=record.name,
        format=record.format,
        schema=record.schema,
        raw=artifact_ref(record.raw),
        normalized=artifact_ref(record.normalized),
        counts=data_pb2.ReportCounts(**{k: v for k, v in record.counts.items() if k in COUNT_FIELDS}),
        created_at=timestamp(record.created_at),
    )


def version_message(record: VersionRecord) -> data_pb2.PreparedVersion:
    return data_pb2.PreparedVersion(
        id=record.id,
        dataset_id=record.dataset_id,
        base_model_id=record.base_model_id,
        request=request_from_json(record.request),
        artifact=artifact_ref(record.artifact),
        split_stats={name: data_pb2.TokenStats(**stats) for name, stats in record.split_stats.items()},
        dropped_too_long=record.dropped_too_long,
        truncated=record.truncated,
        refusal_rows=record.refusal_rows,
        tokenizer_sha256=record.tokenizer_sha256,
        chat_template_sha256=record.chat_template_sha256,
        created_at=timestamp(record.created_at),
        split_pii={name: data_pb2.SplitPii(**pii) for name, pii in record.split_pii.items()},
        warnings=record.warnings,
        preference_pairs=record.preference_pairs,
    )


def job_message(job: Job) -> data_pb2.PrepareJob:
    return data_pb2.PrepareJob(
        status=job_status(job),
        prepared_version_id=job.result.get("prepared_version_id", ""),
        request=stored_request(job.payload),
    )


def conversation_message(row: dict) -> data_pb2.Conversation:
    return data_pb2.Conversation(
        source_line=row["source_line"],
        messages=[common_pb2.ChatMessage(role=m["role"], content=m["content"]) for m in row["messages"]],
        is_refusal=row.get("is_refusal", False),
        rejected=row.get("rejected") or "",
    )


def ingest_options(options: data_pb2.IngestOptions, filename: str) -> IngestOptions:
    return IngestOptions(
        filename=filename,
        file_format=FileFormat(options.format) if options.format else None,
        schema=Schema(options.schema) if options.schema else None,
        field_mapping=dict(options.field_mapping),
        strict=options.strict,
        redact_pii=options.redact_pii,
        encoding=options.encoding,
        pii_allow=tuple(options.pii_allow),
    )


class DataServicer(data_pb2_grpc.DataServiceServicer):
    def __init__(
        self,
        settings: DataSettings,
        store: ArtifactStore,
        catalog: Catalog,
        jobs: JobStore,
        base_models: BaseModels,
        workers: JobRuntime,
        generation: GenerateJobs,
    ) -> None:
        self.settings = settings
        self.store = store
        self.catalog = catalog
        self.jobs = jobs
        self.base_models = base_models
        self.workers = workers
        self.generation = generation

    # Datasets

    def UploadDataset(self, request_iterator: Iterator[data_pb2.UploadDatasetRequest], context):  # noqa: N802
        first = next(request_iterator, None)
        if first is None or not first.HasField("metadata"):
            raise InvalidArgument("the first message must carry the upload metadata", field="metadata")
        metadata = first.metadata
        limit = self.settings.max_upload_bytes
        if metadata.size_bytes > limit:
            raise InvalidArgument(
                f"the upload declares {metadata.size_bytes:,} bytes, over the limit of {limit:,}",
                field="size_bytes",
            )
        received = bytearray()
        for message in request_iterator:
            if message.HasField("metadata"):
                raise InvalidArgument("only the first message may carry metadata", field="metadata")
            received += message.chunk
            if len(received) > limit:
                raise InvalidArgument(f"the upload is over the limit of {limit:,} bytes", field="chunk")
            if metadata.size_bytes and len(received) > metadata.size_bytes:
                raise InvalidArgument(
                    f"declared {metadata.size_bytes:,} bytes, received at least {len(received):,}: "
                    "the upload is longer than declared",
                    field="size_bytes",
                )
        data = bytes(received)
        if metadata.size_bytes and metadata.size_bytes != len(data):
            raise InvalidArgument(
                f"declared {metadata.size_bytes:,} bytes, received {len(data):,}: the upload was cut short",
                field="size_bytes",
            )
        if metadata.sha256 and hashlib.sha256(data).hexdigest() != metadata.sha256.lower():
            raise InvalidArgument("the received bytes do not match the declared checksum", field="sha256")
        record = register_dataset(
            data,
            metadata.options.name,
            f"upload:{metadata.filename}",
            ingest_options(metadata.options, metadata.filename),
            self.settings,
            self.store,
            self.catalog,
        )
        return dataset_message(record)

    def RegisterDataset(self, request: data_pb2.RegisterDatasetRequest, context):  # noqa: N802
        source, data, filename = read_source(request.source, self.settings)
        try:
            record = register_dataset(
                data,
                request.options.name,
                source.location,
                ingest_options(request.options, filename),
                self.settings,
                self.store,
                self.catalog,
            )
        except InvalidArgument as err:
            if source.is_local:
                raise
            # Rows or column names of a remote answer would turn this service into a reader of any
            # page it can reach: say only where it failed.
            raise InvalidArgument(
                f"what {source.host} sent is not a dataset this service reads "
                "(its content is not repeated for remote sources)",
                field="source",
                row=err.row,
            ) from None
        return dataset_message(record)

    def GetDataset(self, request, context):  # noqa: N802
        return dataset_message(self.catalog.get_dataset(request.id))

    def ListDatasets(self, request, context):  # noqa: N802
        offset, limit = page_bounds(request.page.page_size, request.page.page_token)
        records = self.catalog.list_datasets(offset, limit)
        return data_pb2.ListDatasetsResponse(
            datasets=[dataset_message(r) for r in records],
            next_page_token=next_page_token(offset, limit, len(records)),
        )

    def DeleteDataset(self, request, context):  # noqa: N802
        # Artifacts stay: they are content-addressed, may be shared, and prepared versions keep their lineage.
        self.catalog.delete_dataset(request.id)
        return data_pb2.DeleteDatasetResponse()

    def PreviewDataset(self, request, context):  # noqa: N802
        record = self.catalog.get_dataset(request.id)
        if request.offset < 0:
            raise InvalidArgument("must not be negative", field="offset")
        if request.limit < 0:
            raise InvalidArgument("must not be negative", field="limit")
        limit = min(request.limit or 10, 500)
        rows = []
        with self.store.open(record.normalized.uri, "rb") as handle:
            for index, line in enumerate(handle):
                if index >= request.offset + limit:
                    break
                if index >= request.offset:
                    rows.append(conversation_message(json.loads(line)))
        return data_pb2.PreviewDatasetResponse(rows=rows, total=record.counts.get("rows_kept", 0))

    def GetValidationReport(self, request, context):  # noqa: N802
        record = self.catalog.get_dataset(request.id)
        report = json.loads(self.store.read_bytes(record.report_uri))
        return data_pb2.ValidationReport(
            dataset_id=record.id,
            counts=data_pb2.ReportCounts(**{k: v for k, v in report["counts"].items() if k in COUNT_FIELDS}),
            rejected=[data_pb2.RejectedRow(**r) for r in report["rejected"]],
            duplicates=[data_pb2.DuplicateGroup(**d) for d in report["duplicates"]],
            pii=[data_pb2.PiiFinding(**p) for p in report["pii"]],
            schema=report["schema"],
        )

    # Prepare jobs and versions

    def PrepareDataset(self, request: data_pb2.PrepareDatasetRequest, context):  # noqa: N802
        spec = PrepareSpec.from_request(request)
        try:
            dataset = self.catalog.get_dataset(request.dataset_id)
        except NotFound as err:
            raise NotFound(err.message, field="dataset_id") from None
        validation_dataset = None
        if request.validation_dataset_id:
            try:
                validation_dataset = self.catalog.get_dataset(request.validation_dataset_id)
            except NotFound as err:
                raise NotFound(err.message, field="validation_dataset_id") from None
        model = self.base_models.resolve(spec.base_model)
        spec = fit_to_model(spec, model)
        effective = spec.to_request(include_defaults=True)
        # Refused before a job exists: a preference dataset cannot take refusal rows or plain validation rows.
        check_pairs_request(
            effective,
            dataset.schema in PREFERENCE_SCHEMAS,
            validation_dataset.schema in PREFERENCE_SCHEMAS if validation_dataset else None,
        )
        if effective.preference_pairs.from_refusals:
            check_refusal_pairs_request(
                effective, load_conversations(self.store, dataset), dataset.schema in PREFERENCE_SCHEMAS
            )
            spec = self._with_generator(spec, model)
            effective = spec.to_request(include_defaults=True)
        if effective.pii.strict and not effective.pii.redact:
            # Refused here, before a job exists: the caller gets INVALID_ARGUMENT naming the rows.
            refuse_remaining_pii(
                load_conversations(self.store, dataset), PiiAllowList.parse(effective.pii.allow, "pii.allow")
            )
        payload = {
            "version_id": version_id(dataset, model, effective),
            SPEC_KEY: spec.model_dump(mode="json"),
            "model": model.to_json(),
        }
        job = self.jobs.create(PREPARE_KIND, payload)
        self.workers.wake()
        return job_message(job)

    def _with_generator(self, spec: PrepareSpec, model: BaseModel) -> PrepareSpec:
        """The spec naming the generator model it resolved to (the base model when none is given), so the
        version id and the job say which model's answers were rejected."""
        options = spec.preference_pairs
        try:
            generator = self.base_models.resolve(options.generator) if options.generator else model
        except InvalidArgument as err:
            raise InvalidArgument(
                f"no generator model '{options.generator}': {err.message}", field="preference_pairs.generator"
            ) from None
        return spec.model_copy(
            update={"preference_pairs": options.model_copy(update={"generator": generator.name})}
        )

    def GetPrepareJob(self, request, context):  # noqa: N802
        return job_message(self.jobs.get(request.id))

    def WatchPrepareJob(self, request, context):  # noqa: N802
        for event in self.jobs.watch(request.id, request.after_index, context.is_active):
            yield job_event(event)

    def CancelPrepareJob(self, request, context):  # noqa: N802
        return job_message(self.jobs.request_cancel(request.id))

    def GetPreparedVersion(self, request, context):  # noqa: N802
        return version_message(self.catalog.get_version(request.id))

    def ListPreparedVersions(self, request, context):  # noqa: N802
        offset, limit = page_bounds(request.page.page_size, request.page.page_token)
        records = self.catalog.list_versions(request.dataset_id, offset, limit)
        return data_pb2.ListPreparedVersionsResponse(
            versions=[version_message(r) for r in records],
            next_page_token=next_page_token(offset, limit, len(records)),
        )

    def ReadPreparedExamples(self, request, context: grpc.ServicerContext):  # noqa: N802
        record = self.catalog.get_version(request.version_id)
        if request.split not in SPLITS:
            raise InvalidArgument(f"must be one of {', '.join(SPLITS)}", field="split")
        offset, limit = page_bounds(request.page.page_size, request.page.page_token)
        examples = []
        with self.store.open(f"{record.artifact.uri}/{split_file(request.split)}", "rb") as handle:
            for index, line in enumerate(handle):
                if index >= offset + limit:
                    break
                if index >= offset:
                    examples.append(conversation_message(json.loads(line)))
        return data_pb2.ReadPreparedExamplesResponse(
            examples=examples, next_page_token=next_page_token(offset, limit, len(examples))
        )

    # Generate jobs: documents to a question-answer dataset (generate_jobs.py)

    def GenerateDataset(self, request: data_pb2.GenerateDatasetRequest, context):  # noqa: N802
        return self.generation.message(self.generation.create(request))

    def GetGenerateJob(self, request, context):  # noqa: N802
        return self.generation.message(self.generation.jobs.get(request.id))

    def WatchGenerateJob(self, request, context):  # noqa: N802
        for event in self.generation.jobs.watch(request.id, request.after_index, context.is_active):
            yield job_event(event)

    def CancelGenerateJob(self, request, context):  # noqa: N802
        return self.generation.message(self.generation.jobs.request_cancel(request.id))

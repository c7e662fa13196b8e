"""GenerateDataset: the request checked and its documents stored, then a durable job that turns them into
an ordinary question-answer dataset (registered as UploadDataset registers one) and a report.

Documents arrive two ways. Sent in the request (`documents`): `ftctl data generate` reads the user's files
where the user is, which is not where the service runs in any real deployment. Or named as paths
(`sources`) under the service's allowed roots, confined exactly as RegisterDataset's paths are
(ftcommon/sources.py): a folder of runbooks already on the server's share is not sent twice. Either way
the bytes are stored in the artifact store before the job is queued, so the job reads only immutable,
content-addressed documents: a job restarted after its worker was killed reads the same bytes, and the
dataset's lineage (the report) names each document by its sha256.

Every field is checked before anything is stored; a job that keeps no pair fails with the reasons and
registers nothing. The dataset's source names the job and the report, and the report holds the lineage:
the documents, the generator model and the settings.
"""

import json
from pathlib import PurePath
from typing import Any

from google.protobuf.json_format import MessageToDict

from finetune.v1 import data_pb2
from ftcommon.artifacts import Artifact, ArtifactStore
from ftcommon.errors import InvalidArgument, NotFound
from ftcommon.grpc_client import open_channel
from ftcommon.ids import sha256_bytes
from ftcommon.job_runtime import Finished, JobContext, JobFailed, JobRuntime
from ftcommon.jobs import Job, JobStore
from ftcommon.protoconv import artifact_ref, job_status
from ftcommon.specs.generate import GenerateSpec, SourceDocument
from services.data.base_models import BaseModels
from services.data.catalog import Catalog
from services.data.config import DataSettings
from services.data.documents.checks import CheckSettings, EvalQuestion
from services.data.documents.chunking import ChunkSettings
from services.data.documents.generation import GenerationSettings, SourceFile, generate
from services.data.documents.model_generation import STYLES, GeneratorMissing, ModelGenerator, ModelSettings
from services.data.documents.parsers import SUPPORTED_SUFFIXES
from services.data.formats import FileFormat
from services.data.ingest import IngestOptions
from services.data.prepare import load_conversations
from services.data.registration import register_dataset
from services.data.schemas import Schema
from services.data.source_reader import read_source

GENERATE_KIND = "generate"


def generation_settings(spec: GenerateSpec, near_threshold: float) -> GenerationSettings:
    checks = CheckSettings(
        max_answer_chars=max(spec.max_answer_chars, CheckSettings().max_answer_chars),
        min_grounding=spec.min_grounding,
        near_duplicate_threshold=near_threshold,
        refusal_text=spec.refusal_text,
    )
    chunking = ChunkSettings(spec.chunk_max_chars, spec.chunk_overlap_chars)
    return GenerationSettings(
        chunking, checks, spec.phrasings_per_fact, spec.max_answer_chars, spec.redact_pii
    )


def model_settings(spec: GenerateSpec, model: str, settings: DataSettings) -> ModelSettings:
    return ModelSettings(
        model=model,
        styles=tuple(dict.fromkeys(spec.question_styles)) or tuple(STYLES),
        attempts=spec.model_attempts,
        max_tokens=spec.model_max_tokens,
        concurrency=settings.generator_concurrency,
        timeout_seconds=settings.generator_timeout_seconds,
    )


class GenerateJobs:
    def __init__(
        self,
        settings: DataSettings,
        store: ArtifactStore,
        catalog: Catalog,
        jobs: JobStore,
        base_models: BaseModels,
    ) -> None:
        self.settings = settings
        self.store = store
        self.catalog = catalog
        self.jobs = jobs
        self.base_models = base_models
        self.runtime = JobRuntime(jobs, GENERATE_KIND, self.run, settings.generate_jobs)

    # At request time

    def create(self, request: data_pb2.GenerateDatasetRequest) -> Job:
        spec = GenerateSpec.from_request(request)
        if not spec.documents and not spec.sources:
            raise InvalidArgument("name at least one document (documents or sources)", field="documents")
        generator: dict[str, str] | None = None
        if spec.generator:
            try:
                model = self.base_models.resolve(spec.generator)
            except InvalidArgument as err:
                raise InvalidArgument(
                    f"no generator model '{spec.generator}': {err.message}", field="generator"
                ) from None
            generator = {"name": model.name, "id": model.id}
        for index, dataset_id in enumerate(spec.eval_dataset_ids):
            try:
                self.catalog.get_dataset(dataset_id)
            except NotFound as err:
                raise NotFound(err.message, field=f"eval_dataset_ids[{index}]") from None
        files = [*self._sent(spec), *self._read(spec)]
        documents = [self._stored(name, data) for name, data in files]
        # The spec as the job keeps it: every default filled in, the documents by name (their bytes are stored).
        shown = spec.model_copy(
            update={"documents": [SourceDocument(filename=d.filename) for d in spec.documents]}
        )
        payload = {
            "spec": shown.model_dump(mode="json"),
            "documents": documents,
            "generator": generator,
        }
        job = self.jobs.create(GENERATE_KIND, payload)
        self.runtime.wake()
        return job

    def _sent(self, spec: GenerateSpec) -> list[tuple[str, bytes]]:
        files = []
        for index, document in enumerate(spec.documents):
            name = PurePath(document.filename).name
            if not name:
                raise InvalidArgument("is required", field=f"documents[{index}].filename")
            self._check_document(name, len(document.content), f"documents[{index}]")
            files.append((name, document.content))
        return files

    def _read(self, spec: GenerateSpec) -> list[tuple[str, bytes]]:
        files = []
        for index, text in enumerate(spec.sources):
            field = f"sources[{index}]"
            try:
                source, data, name = read_source(text, self.settings)
            except InvalidArgument as err:
                raise InvalidArgument(err.message, field=field) from None
            if not source.is_local:
                raise InvalidArgument("documents are read from local paths only; send others", field=field)
            self._check_document(name, len(data), field)
            files.append((name, data))
        return files

    def _check_document(self, name: str, size: int, field: str) -> None:
        if PurePath(name).suffix.lower() not in SUPPORTED_SUFFIXES:
            raise InvalidArgument(
                f"'{name}' is not a document type this service reads ({', '.join(SUPPORTED_SUFFIXES)})",
                field=field,
            )
        limit = self.settings.max_document_bytes
        if size > limit:
            raise InvalidArgument(f"'{name}' is {size:,} bytes, over the limit of {limit:,}", field=field)

    def _stored(self, name: str, data: bytes) -> dict[str, Any]:
        artifact = self.store.put_bytes(data)
        return {
            "name": name,
            "uri": artifact.uri,
            "sha256": artifact.sha256,
            "size_bytes": artifact.size_bytes,
        }

    # The job

    def run(self, context: JobContext) -> Finished:
        payload = context.job.payload
        spec = stored_spec(payload)
        run_settings = generation_settings(spec, self.settings.near_duplicate_threshold)
        sources = [
            SourceFile(d["name"], self.store.read_bytes(d["uri"]), d["sha256"]) for d in payload["documents"]
        ]
        eval_questions = self._eval_questions(spec.eval_dataset_ids)
        generator = payload["generator"]
        channel = (
            open_channel(
                self.settings.inference_address,
                self.settings.generator_timeout_seconds,
                self.settings.security,
            )
            if generator
            else None
        )
        try:
            model = (
                ModelGenerator(channel, model_settings(spec, generator["name"], self.settings))
                if channel
                else None
            )
            result = generate(
                sources, run_settings, model, eval_questions, context.progress, context.stop_if_asked
            )
        except GeneratorMissing as err:
            raise JobFailed(str(err)) from None
        finally:
            if channel is not None:
                channel.close()
        if not result.chunks:
            reasons = "; ".join(f"{d['name']}: {d['rejected']}" for d in result.documents)
            raise JobFailed(f"no document could be read: {reasons}")
        report = result.report(len(eval_questions), generator["id"] if generator else "")
        report["lineage"] = {
            "job_id": context.job.id,
            "documents": payload["documents"],
            "generator": generator,
            "settings": MessageToDict(
                spec.to_request(include_defaults=True), preserving_proto_field_name=True
            ),
        }
        stored_report = self.store.put_bytes(json.dumps(report, ensure_ascii=False).encode())
        rows = result.rows()
        if not rows:
            reasons = (
                ", ".join(f"{k} {v}" for k, v in report["rejected_by_reason"].items()) or "none generated"
            )
            raise JobFailed(
                f"no pair was kept of {report['pairs_generated']} generated ({reasons}); report {stored_report.uri}"
            )
        data = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows).encode()
        name = spec.name or f"generated-{context.job.id}"
        dataset_id = generated_dataset_id(context.job.id)
        try:
            # An earlier attempt registered the dataset and was killed before the job was closed.
            record = self.catalog.get_dataset(dataset_id)
        except NotFound:
            record = register_dataset(
                data,
                name,
                f"generated by job {context.job.id}; report {stored_report.uri}",
                IngestOptions(
                    filename=f"{name}.jsonl", file_format=FileFormat.JSONL, schema=Schema.QUESTION_ANSWER
                ),
                self.settings,
                self.store,
                self.catalog,
                dataset_id=dataset_id,
            )
        return Finished(
            {"dataset_id": record.id, "report": _artifact_json(stored_report)},
            message=f"dataset {record.id}: {len(rows)} pairs kept of {report['pairs_generated']} generated",
        )

    def _eval_questions(self, dataset_ids: list[str]) -> list[EvalQuestion]:
        questions = []
        for dataset_id in dataset_ids:
            try:
                dataset = self.catalog.get_dataset(dataset_id)
            except NotFound:
                raise JobFailed(f"evaluation set {dataset_id} was deleted before the job ran") from None
            for conversation in load_conversations(self.store, dataset):
                asked = [m["content"] for m in conversation.messages if m["role"] == "user"]
                if asked:
                    questions.append(EvalQuestion(dataset_id, conversation.line, asked[-1]))
        return questions

    # What callers see

    def message(self, job: Job) -> data_pb2.GenerateJob:
        reply = data_pb2.GenerateJob(
            status=job_status(job),
            dataset_id=job.result.get("dataset_id", ""),
            request=stored_spec(job.payload).to_request(include_defaults=True),
        )
        stored = job.result.get("report")
        if stored:
            report = json.loads(self.store.read_bytes(stored["uri"]))
            reply.report.CopyFrom(_report_message(report, Artifact(**stored)))
        return reply


def generated_dataset_id(job_id: str) -> str:
    """The dataset a generate job registers, named by the job: shaped like every dataset id."""
    return f"ds-{sha256_bytes(job_id.encode())[:12]}"


def stored_spec(payload: dict[str, Any]) -> GenerateSpec:
    return GenerateSpec.model_validate(payload["spec"])


def _artifact_json(artifact: Artifact) -> dict[str, Any]:
    return {"uri": artifact.uri, "sha256": artifact.sha256, "size_bytes": artifact.size_bytes}


def _pair_message(row: dict[str, Any]) -> data_pb2.GeneratedPair:
    fields = data_pb2.GeneratedPair.DESCRIPTOR.fields_by_name
    return data_pb2.GeneratedPair(**{k: v for k, v in row.items() if k in fields})


def _report_message(report: dict[str, Any], stored: Artifact) -> data_pb2.GenerationReport:
    return data_pb2.GenerationReport(
        documents=[data_pb2.DocumentOutcome(**d) for d in report["documents"]],
        chunks=[data_pb2.ChunkYield(**c) for c in report["chunks"]],
        pairs_generated=report["pairs_generated"],
        pairs_kept=report["pairs_kept"],
        facts_kept=report["facts_kept"],
        rejected_by_reason=report["rejected_by_reason"],
        mean_grounding=report["mean_grounding"],
        sample_kept=[_pair_message(p) for p in report["sample_kept"]],
        sample_rejected=[_pair_message(p) for p in report["sample_rejected"]],
        generator_model_id=report["generator_model_id"],
        report=artifact_ref(stored),
        eval_questions=report["eval_questions"],
    )

"""`ftctl pipeline run FILE`: upload, prepare, train, evaluate and promote from one declarative file.

Every step records what it produced in a state file and is idempotent: a re-run after a failure or a
kill skips finished steps and re-attaches to a job still running (idempotency keys make the services
return the same job). The exit status is 0 only when the model was promoted, so CI can gate on it.
"""

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import grpc
import typer
from rich.markup import escape

from finetune.v1 import (
    common_pb2,
    data_pb2,
    data_pb2_grpc,
    eval_pb2,
    eval_pb2_grpc,
    registry_pb2,
    registry_pb2_grpc,
    trainer_pb2,
    trainer_pb2_grpc,
)
from ftcommon.ids import sha256_file, sha256_json
from ftcommon.settings import ServiceAddresses
from ftcommon.specs.generate import SourceDocument
from ftcommon.specs.train import TrainSpec
from ftctl.common import console, follow_job, rpc_errors, stub
from ftctl.data import FORMATS, upload_requests
from ftctl.data_generate import document_files
from ftctl.pipeline_spec import PipelineSpec, PipelineSpecError, load_spec

app = typer.Typer(no_args_is_help=True)

WATCH_TIMEOUT_SECONDS = 6 * 3600


class PipelineFailed(Exception):
    pass


@dataclass
class PipelineState:
    """What each finished step produced; the file is rewritten atomically after every step."""

    spec_sha256: str = ""
    dataset_sha256: str = ""
    dataset_id: str = ""
    prepared_version_id: str = ""
    train_job_id: str = ""
    train_attempt: int = 0
    merged_model_id: str = ""
    eval_run_id: str = ""
    eval_attempt: int = 0
    verdict: str = ""
    verdict_reasons: tuple[str, ...] = ()
    promoted_alias: str = ""

    @classmethod
    def load(cls, path: Path) -> "PipelineState":
        if not path.exists():
            return cls()
        raw = json.loads(path.read_text())
        raw["verdict_reasons"] = tuple(raw.get("verdict_reasons", ()))
        return cls(**raw)

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2))
        os.replace(tmp, path)


@dataclass
class PipelineResult:
    state: PipelineState
    report_html_path: Path | None

    @property
    def promoted(self) -> bool:
        return bool(self.state.promoted_alias)


def generate_request(spec: PipelineSpec) -> data_pb2.GenerateDatasetRequest:
    """The documents section as a GenerateDataset request: its settings, the dataset's name, the files' bytes.
    Unless the section says otherwise, answers are checked against the refusal text the model will be taught."""
    documents = spec.documents
    assert documents is not None, "a pipeline without documents uploads its dataset"
    sent = [SourceDocument(filename=p.name, content=p.read_bytes()) for p in document_files(documents.paths)]
    supplied: dict[str, Any] = {"name": documents.name, "documents": sent}
    if "refusal_text" not in documents.generate.model_fields_set and spec.prepare.refusals.refusal_text:
        supplied["refusal_text"] = spec.prepare.refusals.refusal_text
    return documents.generate.model_copy(update=supplied).to_request()


def prepare_request(spec: PipelineSpec, dataset_id: str) -> data_pb2.PrepareDatasetRequest:
    return spec.prepare.model_copy(update={"dataset_id": dataset_id}).to_request()


def train_spec(spec: PipelineSpec, prepared_version_id: str, attempt: int) -> TrainSpec:
    """The training job of this pipeline run; the same hyperparameters on the same data are the same job."""
    asked = spec.hyperparameters.model_dump(mode="json", exclude_unset=True)
    return TrainSpec(
        base_model=spec.base_model,
        prepared_version_id=prepared_version_id,
        hyperparameters=spec.hyperparameters,
        idempotency_key=f"pipeline:{spec.name}:{prepared_version_id}:{sha256_json(asked)[:16]}:{attempt}",
        display_name=spec.name,
    )


def eval_request(
    spec: PipelineSpec, baseline: str, candidate: str, prepared_version_id: str, attempt: int
) -> eval_pb2.CreateRunRequest:
    """The file's eval section on the prepared version's split, baseline against candidate. Unless the
    section says otherwise, it uses the prepare seed and the refusal text the model was taught."""
    asked = spec.eval
    supplied: dict[str, Any] = {
        "models": [baseline, candidate],
        "data": asked.data.model_copy(update={"prepared_version_id": prepared_version_id}),
        "idempotency_key": f"pipeline:{spec.name}:{baseline}:{candidate}:{attempt}",
    }
    if "seed" not in asked.model_fields_set:
        supplied["seed"] = spec.prepare.seed
    if "refusal_text" not in asked.model_fields_set and spec.prepare.refusals.refusal_text:
        supplied["refusal_text"] = spec.prepare.refusals.refusal_text
    return asked.model_copy(update=supplied).to_request()


class PipelineRunner:
    def __init__(self, spec: PipelineSpec, state_path: Path, addresses: ServiceAddresses) -> None:
        self.spec = spec
        self.state_path = state_path
        self.state = PipelineState.load(state_path)
        self.data = stub(data_pb2_grpc.DataServiceStub, addresses.data_address)
        self.trainer = stub(trainer_pb2_grpc.TrainerServiceStub, addresses.trainer_address)
        self.registry = stub(registry_pb2_grpc.RegistryServiceStub, addresses.trainer_address)
        self.eval = stub(eval_pb2_grpc.EvalServiceStub, addresses.eval_address)
        self.generation_report: data_pb2.GenerationReport | None = None  # set when this run generated

    def run(self) -> PipelineResult:
        self._forget_outdated_steps()
        self.upload()
        self.prepare()
        self.train()
        self.evaluate()
        self.promote()
        return PipelineResult(self.state, self.save_report())

    # Steps

    def upload(self) -> None:
        if self.state.dataset_id and self._exists(self.data.GetDataset, data_pb2.GetDatasetRequest):
            console.print(f"[green]✓[/green] dataset {self.state.dataset_id} (already uploaded)")
            return
        if self.spec.documents is not None:
            self.generate()
            return
        path = self.spec.dataset.path
        options = data_pb2.IngestOptions(
            name=self.spec.dataset.name,
            format=FORMATS.get(self.spec.dataset.format, data_pb2.DATASET_FORMAT_UNSPECIFIED),
            field_mapping=self.spec.dataset.field_mapping,
            strict=self.spec.dataset.strict,
            redact_pii=self.spec.dataset.redact_pii,
            encoding=self.spec.dataset.encoding,
            pii_allow=self.spec.dataset.pii_allow,
        )
        metadata = data_pb2.UploadMetadata(
            options=options,
            filename=path.name,
            size_bytes=path.stat().st_size,
            sha256=self.state.dataset_sha256,
        )
        dataset = self.data.UploadDataset(upload_requests(metadata, path), timeout=600)
        self.state.dataset_id = dataset.id
        self._save()
        counts = dataset.counts
        console.print(
            f"[green]✓[/green] dataset {dataset.id}: {counts.rows_kept} rows kept, {counts.rows_rejected} rejected"
        )

    def generate(self) -> None:
        """The dataset from the pipeline's documents (GenerateDataset), in place of an upload."""
        job = self.data.GenerateDataset(generate_request(self.spec), timeout=600)
        self._follow(self.data.WatchGenerateJob, job.status.id, "generate")
        job = self.data.GetGenerateJob(data_pb2.GetGenerateJobRequest(id=job.status.id))
        self._require_success(job.status, "generate")
        self.state.dataset_id = job.dataset_id
        self._save()
        report = self.generation_report = job.report
        console.print(
            f"[green]✓[/green] dataset {job.dataset_id}: {report.pairs_kept} pairs kept of "
            f"{report.pairs_generated} generated ({report.facts_kept} facts)"
        )

    def prepare(self) -> None:
        if self.state.prepared_version_id:
            console.print(
                f"[green]✓[/green] prepared version {self.state.prepared_version_id} (already prepared)"
            )
            return
        job = self.data.PrepareDataset(prepare_request(self.spec, self.state.dataset_id))
        self._follow(self.data.WatchPrepareJob, job.status.id, "prepare")
        job = self.data.GetPrepareJob(data_pb2.GetPrepareJobRequest(id=job.status.id))
        self._require_success(job.status, "prepare")
        self.state.prepared_version_id = job.prepared_version_id
        self._save()

    def train(self) -> None:
        if self.state.merged_model_id:
            console.print(f"[green]✓[/green] merged model {self.state.merged_model_id} (already trained)")
            return
        if self.state.train_job_id:
            previous = self.trainer.GetJob(trainer_pb2.GetJobRequest(id=self.state.train_job_id))
            if previous.status.state in (common_pb2.JOB_STATE_FAILED, common_pb2.JOB_STATE_CANCELLED):
                self.state.train_attempt += 1  # a fresh key: the failed job stays as it was
        request = train_spec(self.spec, self.state.prepared_version_id, self.state.train_attempt).to_request()
        job = self.trainer.CreateJob(request)
        self.state.train_job_id = job.status.id
        self._save()
        self._follow(self.trainer.WatchJob, job.status.id, "train")
        job = self.trainer.GetJob(trainer_pb2.GetJobRequest(id=job.status.id))
        self._require_success(job.status, "train")
        self.state.merged_model_id = job.merged_model_id
        self._save()

    def evaluate(self) -> None:
        if self.state.verdict:
            console.print(f"[green]✓[/green] evaluation {self.state.eval_run_id}: {self.state.verdict}")
            return
        if self.state.eval_run_id:
            previous = self.eval.GetRun(eval_pb2.GetRunRequest(id=self.state.eval_run_id))
            if previous.status.state in (common_pb2.JOB_STATE_FAILED, common_pb2.JOB_STATE_CANCELLED):
                self.state.eval_attempt += 1
        # The registry promotes only on a comparison with the model the alias serves now (for a new alias:
        # with the base model the candidate was trained from).
        baseline = self._current_model(self.spec.promote_alias) or self.spec.base_model
        request = eval_request(
            self.spec,
            baseline,
            self.state.merged_model_id,
            self.state.prepared_version_id,
            self.state.eval_attempt,
        )
        run = self.eval.CreateRun(request)
        self.state.eval_run_id = run.status.id
        self._save()
        self._follow(self.eval.WatchRun, run.status.id, "evaluate")
        run = self.eval.GetRun(eval_pb2.GetRunRequest(id=run.status.id))
        self._require_success(run.status, "evaluate")
        [verdict] = [v for v in run.candidate_verdicts if v.model_id == self.state.merged_model_id]
        self.state.verdict = eval_pb2.Verdict.Name(verdict.verdict).removeprefix("VERDICT_").lower()
        self.state.verdict_reasons = tuple(verdict.reasons)
        self._save()

    def promote(self) -> None:
        if self.state.verdict != "pass":
            console.print(f"[yellow]not promoted[/yellow]: {escape('; '.join(self.state.verdict_reasons))}")
            return
        request = registry_pb2.PromoteRequest(
            model=self.state.merged_model_id,
            alias=self.spec.promote_alias,
            eval_run_id=self.state.eval_run_id,
            data=eval_pb2.EvalData(
                prepared_version_id=self.state.prepared_version_id, split=self.spec.eval.data.split
            ),
            actor=f"pipeline {self.spec.name}",
        )
        try:
            self.registry.Promote(request)
        except grpc.RpcError as err:
            if err.code() != grpc.StatusCode.FAILED_PRECONDITION:
                raise
            # The registry's gate refused (e.g. the alias moved since the evaluation): not promoted, said why.
            console.print(f"[yellow]not promoted[/yellow]: {escape(err.details() or '')}")
            return
        self.state.promoted_alias = self.spec.promote_alias
        self._save()
        console.print(
            f"[green]✓[/green] promoted {self.state.merged_model_id} to '{self.spec.promote_alias}'"
        )

    # Internals

    def _forget_outdated_steps(self) -> None:
        """A changed pipeline file or dataset invalidates what the old one produced."""
        spec_sha = sha256_json(self.spec.model_dump(mode="json"))
        if self.spec.documents is not None:
            files = document_files(self.spec.documents.paths)
            dataset_sha = sha256_json([[str(p), sha256_file(p)] for p in files])
        else:
            dataset_sha = sha256_file(self.spec.dataset.path)
        if (self.state.spec_sha256, self.state.dataset_sha256) != (spec_sha, dataset_sha):
            self.state = PipelineState(spec_sha256=spec_sha, dataset_sha256=dataset_sha)
            self._save()

    def _current_model(self, alias: str) -> str:
        """The model id the alias points at, or "" when it is not set."""
        try:
            return self.registry.GetAlias(trainer_pb2.GetAliasRequest(alias=alias)).model_id
        except grpc.RpcError as err:
            if err.code() == grpc.StatusCode.NOT_FOUND:
                return ""
            raise

    def _exists(self, method: Any, request_type: Any) -> bool:
        try:
            method(request_type(id=self.state.dataset_id))
            return True
        except grpc.RpcError as err:
            if err.code() == grpc.StatusCode.NOT_FOUND:
                return False
            raise

    def _follow(self, watch: Any, job_id: str, step: str) -> None:
        events = watch(common_pb2.WatchRequest(id=job_id), timeout=WATCH_TIMEOUT_SECONDS)
        follow_job(events, f"{step} {job_id}")

    @staticmethod
    def _require_success(status: common_pb2.JobStatus, step: str) -> None:
        if status.state != common_pb2.JOB_STATE_SUCCEEDED:
            state = common_pb2.JobState.Name(status.state).removeprefix("JOB_STATE_").lower()
            raise PipelineFailed(f"{step} job {status.id} {state}: {status.error or 'no error message'}")

    def save_report(self) -> Path | None:
        if not self.state.eval_run_id:
            return None
        report = self.eval.GetReport(eval_pb2.GetRunRequest(id=self.state.eval_run_id))
        path = self.state_path.with_name(f"{self.spec.name}-report.html")
        path.write_text(report.report_html)
        path.with_suffix(".json").write_text(report.report_json)
        return path

    def _save(self) -> None:
        self.state.save(self.state_path)


def run_pipeline(spec_path: Path, state_dir: Path, addresses: ServiceAddresses) -> PipelineResult:
    spec = load_spec(spec_path)
    return PipelineRunner(spec, state_dir / f"{spec.name}.json", addresses).run()


@app.command("run")
def run(
    spec_path: Path = typer.Argument(..., exists=True, dir_okay=False, help="The pipeline YAML file."),
    state_dir: Path = typer.Option(Path("var/pipelines"), help="Where each step's results are recorded."),
) -> None:
    """Run (or resume) a pipeline; exit 0 only when the model was promoted."""
    started = time.monotonic()
    with rpc_errors():
        try:
            result = run_pipeline(spec_path, state_dir, ServiceAddresses())
        except (PipelineSpecError, PipelineFailed) as exc:
            console.print(f"[red]error[/red] {escape(str(exc))}")
            raise typer.Exit(2) from None
    if result.report_html_path:
        console.print(f"report: {result.report_html_path}")
    console.print(f"finished in {time.monotonic() - started:.0f}s")
    raise typer.Exit(0 if result.promoted else 1)

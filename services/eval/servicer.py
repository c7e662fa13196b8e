"""EvalService: runs are durable jobs; reports are artifacts read back through GetReport."""

from collections.abc import Iterator
from typing import Any

import grpc

from finetune.v1 import common_pb2, eval_pb2, eval_pb2_grpc
from ftcommon import protoconv
from ftcommon.artifacts import ArtifactStore
from ftcommon.errors import FailedPrecondition, NotFound
from ftcommon.jobs import Job, JobState, JobStore
from ftcommon.pagination import next_page_token, page_bounds
from ftcommon.specs.evaluate import EvalSpec
from services.eval.clients import Clients
from services.eval.config import EvalSettings
from services.eval.runner import parse_request, spec_payload, validate_request
from services.eval.worker import KIND

VERDICTS = {"PASS": eval_pb2.VERDICT_PASS, "FAIL": eval_pb2.VERDICT_FAIL}


class EvalServicer(eval_pb2_grpc.EvalServiceServicer):
    def __init__(
        self, store: JobStore, artifacts: ArtifactStore, settings: EvalSettings, clients: Clients
    ) -> None:
        self.store = store
        self.artifacts = artifacts
        self.settings = settings
        self.clients = clients

    def CreateRun(
        self, request: eval_pb2.CreateRunRequest, context: grpc.ServicerContext
    ) -> eval_pb2.EvalRun:
        spec = EvalSpec.from_request(request)
        validate_request(spec, self.settings.resolved_benchmark_roots())
        self._check_references(spec.to_request())
        job = self.store.create(KIND, spec_payload(spec), idempotency_key=spec.idempotency_key or None)
        return self._run(job)

    def _check_references(self, request: eval_pb2.CreateRunRequest) -> None:
        """The models and the data exist now, so a typo fails here and not minutes later in the worker."""
        for reference in request.models:
            if reference.strip():
                self.clients.resolve_model(reference.strip())
        if request.judge_model:
            self.clients.resolve_model(request.judge_model, field="judge_model")
        self.clients.check_data(request.data)

    def GetRun(self, request: eval_pb2.GetRunRequest, context: grpc.ServicerContext) -> eval_pb2.EvalRun:
        return self._run(self._job(request.id))

    def ListRuns(
        self, request: eval_pb2.ListRunsRequest, context: grpc.ServicerContext
    ) -> eval_pb2.ListRunsResponse:
        offset, limit = page_bounds(request.page.page_size, request.page.page_token)
        state = JobState(request.state) if request.state else None
        jobs = self.store.list_jobs(state, offset, limit, kind=KIND)
        return eval_pb2.ListRunsResponse(
            runs=[self._run(job) for job in jobs], next_page_token=next_page_token(offset, limit, len(jobs))
        )

    def CancelRun(self, request: eval_pb2.GetRunRequest, context: grpc.ServicerContext) -> eval_pb2.EvalRun:
        self._job(request.id)
        return self._run(self.store.request_cancel(request.id))

    def WatchRun(
        self, request: common_pb2.WatchRequest, context: grpc.ServicerContext
    ) -> Iterator[common_pb2.JobEvent]:
        self._job(request.id)
        for event in self.store.watch(request.id, request.after_index, context.is_active):
            yield protoconv.job_event(event)

    def GetReport(
        self, request: eval_pb2.GetRunRequest, context: grpc.ServicerContext
    ) -> eval_pb2.EvalReport:
        job = self._job(request.id)
        if job.state != JobState.SUCCEEDED:
            raise FailedPrecondition(
                f"run {job.id} is {job.state.name.lower()}; reports exist for succeeded runs", field="id"
            )
        report_json = self.artifacts.read_bytes(job.result["report_json"]["uri"]).decode()
        return eval_pb2.EvalReport(
            run_id=job.id,
            report_json=report_json,
            html=_artifact(job.result["report_html"]),
            report_html=self.artifacts.read_bytes(job.result["report_html"]["uri"]).decode(),
            verdict=VERDICTS[job.result["verdict"]],
            verdict_reasons=job.result["verdict_reasons"],
            created_at=protoconv.timestamp(job.finished_at),
        )

    def CompareRuns(
        self, request: eval_pb2.CompareRunsRequest, context: grpc.ServicerContext
    ) -> eval_pb2.CompareRunsResponse:
        """Each run's per-model summaries side by side; models are named `<run id>/<label>`."""
        summaries = []
        for run_id in request.run_ids:
            job = self._job(run_id)
            if job.state != JobState.SUCCEEDED:
                raise FailedPrecondition(f"run {run_id} is {job.state.name.lower()}", field="run_ids")
            summaries += [
                _summary(row, model=f"{run_id}/{row['model']}") for row in job.result.get("summaries", [])
            ]
        return eval_pb2.CompareRunsResponse(summaries=summaries)

    # Internals

    def _job(self, job_id: str) -> Job:
        job = self.store.get(job_id)
        if job.kind != KIND:
            raise NotFound(f"run {job_id} does not exist", field="id")
        return job

    def _run(self, job: Job) -> eval_pb2.EvalRun:
        run = eval_pb2.EvalRun(status=protoconv.job_status(job), request=parse_request(job.payload))
        result = job.result
        if result:
            run.summaries.extend(_summary(row) for row in result.get("summaries", []))
            run.verdict = VERDICTS.get(result.get("verdict", ""), eval_pb2.VERDICT_UNSPECIFIED)
            run.verdict_reasons.extend(result.get("verdict_reasons", []))
            run.baseline_model_id = result.get("baseline_model_id", "")
            run.candidate_verdicts.extend(
                eval_pb2.CandidateVerdict(
                    model=row["model"],
                    model_id=row["model_id"],
                    verdict=VERDICTS[row["verdict"]],
                    reasons=row["reasons"],
                )
                for row in result.get("candidate_verdicts", [])
            )
            if "report_html" in result:
                run.report_html.CopyFrom(_artifact(result["report_html"]))
                run.report_json.CopyFrom(_artifact(result["report_json"]))
        return run


def _artifact(stored: dict[str, Any]) -> common_pb2.ArtifactRef:
    return common_pb2.ArtifactRef(uri=stored["uri"], sha256=stored["sha256"], size_bytes=stored["size"])


def _summary(row: dict[str, Any], model: str | None = None) -> eval_pb2.MetricSummary:
    return eval_pb2.MetricSummary(
        model=model or row["model"],
        metric=row["metric"],
        mean=row["mean"],
        ci_low=row["low"],
        ci_high=row["high"],
    )

"""Executes one evaluation run: read examples, generate and score with every model, report, verdict.

The request arrives as the job's payload (the CreateRunRequest as a dict); progress and the final
result go to the job store. Nothing here decides when a run starts or stops: the worker does.
"""

import json
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.json_format import ParseDict

from finetune.v1 import common_pb2, eval_pb2, inference_pb2
from ftcommon.artifacts import ArtifactStore
from ftcommon.errors import InvalidArgument, Unavailable, describe_rpc_error
from ftcommon.job_runtime import JobStopped
from ftcommon.jobs import EventKind, JobStore
from ftcommon.refusal_detection import RefusalDetector
from ftcommon.sources import confine_local_path
from ftcommon.specs.evaluate import EvalSpec
from services.eval import benchmarks
from services.eval.analysis import Example, ModelOutputs, answer_rows, build_report, preference_rows
from services.eval.clients import Clients, Messages
from services.eval.config import EvalSettings
from services.eval.off_topic_probes import OFF_TOPIC_PROBES
from services.eval.promotion import Rule, with_refusal_defaults
from services.eval.report import render_html

REFERENCE_LOSS = "reference_loss"
REFUSAL = "refusal"
JUDGE = "judge"
PREFERENCE_ACCURACY = "preference_accuracy"  # only on data with preference pairs
# Text metrics are always computed (they cost nothing); these cost model calls and can be left out.
OPTIONAL_METRICS = (REFERENCE_LOSS, REFUSAL, JUDGE, PREFERENCE_ACCURACY)
KNOWN_METRICS = ("exact_match", "token_f1", "rouge_l", "bleu", "answer_length", *OPTIONAL_METRICS)
_GRADE = re.compile(r"\b([1-5])\b")
CANNED_REFERENCE_ROWS = 3
SPEC_KEY = "spec"


def spec_payload(spec: EvalSpec) -> dict[str, Any]:
    """The run's job payload: its spec, stored once."""
    return {SPEC_KEY: spec.model_dump(mode="json")}


def parse_request(payload: dict[str, Any]) -> eval_pb2.CreateRunRequest:
    """The run's request, read back through its stored spec."""
    if SPEC_KEY in payload:
        return EvalSpec.model_validate(payload[SPEC_KEY]).to_request()
    # A run queued before the spec was stored: its payload is the request itself.
    return ParseDict(payload, eval_pb2.CreateRunRequest(), ignore_unknown_fields=True)


def validate_request(request: EvalSpec, benchmark_roots: tuple[Path, ...]) -> None:
    """What the spec cannot check alone (it needs this service's metrics, benchmarks and readable roots),
    before the run is queued, so bad input fails at CreateRun."""
    if not request.models:
        raise InvalidArgument("name at least one model; the first is the baseline", field="models")
    if not (request.data.prepared_version_id or request.data.dataset_id) and not request.benchmarks:
        raise InvalidArgument("set a prepared version or a dataset, or at least one benchmark", field="data")
    for name in request.metrics:
        if name not in KNOWN_METRICS:
            raise InvalidArgument(
                f"unknown metric {name!r}; known: {', '.join(KNOWN_METRICS)}", field="metrics"
            )
    for index, spec in enumerate(request.benchmarks):
        if spec.name not in benchmarks.BENCHMARK_NAMES:
            raise InvalidArgument(
                f"unknown benchmark {spec.name!r}; known: {', '.join(benchmarks.BENCHMARK_NAMES)}",
                field=f"benchmarks[{index}].name",
            )
        benchmark_path(spec.path, benchmark_roots, index)


def benchmark_path(text: str, roots: tuple[Path, ...], index: int) -> Path:
    """The benchmark file or folder, confined to the roots the operator allows the evaluator to read."""
    path = confine_local_path(text, roots, f"benchmarks[{index}].path")
    if not path.exists():
        raise InvalidArgument(f"{text} does not exist", field=f"benchmarks[{index}].path")
    return path


class RunExecutor:
    def __init__(
        self, settings: EvalSettings, store: JobStore, artifacts: ArtifactStore, clients: Clients
    ) -> None:
        self.settings = settings
        self.store = store
        self.artifacts = artifacts
        self.clients = clients

    def execute(self, job_id: str, payload: dict[str, Any], keep_going: Callable[[], bool]) -> dict[str, Any]:
        """Runs to the end and returns the job's result; raises JobStopped when `keep_going` turns False.
        A failed call to another service fails the run with one line, never the grpc error's repr."""
        try:
            return self._execute(job_id, payload, keep_going)
        except grpc.RpcError as err:
            raise Unavailable(f"a call to another service failed: {describe_rpc_error(err)}") from None

    def _execute(
        self, job_id: str, payload: dict[str, Any], keep_going: Callable[[], bool]
    ) -> dict[str, Any]:
        request = parse_request(payload)
        wanted = set(request.metrics) or {REFERENCE_LOSS, REFUSAL, PREFERENCE_ACCURACY} | (
            {JUDGE} if request.judge_model or self.settings.judge_model else set()
        )
        if JUDGE in wanted and not (request.judge_model or self.settings.judge_model):
            raise InvalidArgument("the judge metric needs a judge model", field="judge_model")
        examples, refusal_text = self._examples(request)
        detector = RefusalDetector(refusal_text)
        examples = _classify_references(examples, detector)
        models = [self.clients.resolve_model(reference.strip()) for reference in request.models]
        labels = _unique_labels([m.reference for m in models])
        sampling = self._sampling(request)
        probes = list(request.off_topic_probes) or list(OFF_TOPIC_PROBES)
        in_domain = list(request.in_domain_probes)
        roots = self.settings.resolved_benchmark_roots()
        questions = {
            spec.name: benchmarks.load_questions(
                spec.name, benchmark_path(spec.path, roots, index), spec.limit
            )
            for index, spec in enumerate(request.benchmarks)
        }
        pairs = [examples[i] for i in preference_rows(examples)]
        progress = _Progress(
            self.store,
            job_id,
            keep_going,
            len(models),
            _work_units(examples, len(probes) + len(in_domain), questions, wanted)
            + (len(pairs) if PREFERENCE_ACCURACY in wanted else 0),
        )
        outputs = []
        for label, model in zip(labels, models, strict=True):
            progress.model(label)
            result = ModelOutputs(label=label, model_id=model.model_id, answers=[])
            prompts = [e.messages for e in examples]
            if REFUSAL in wanted:
                prompts += [_user(q) for q in probes] + [_user(q) for q in in_domain]
            answers = self.clients.generate_many(model.model_id, prompts, sampling, progress.step)
            result.answers = answers[: len(examples)]
            if REFUSAL in wanted:
                rest = [a.text for a in answers[len(examples) :]]
                result.off_topic_answers, result.in_domain_probe_answers = (
                    rest[: len(probes)],
                    rest[len(probes) :],
                )
            if REFERENCE_LOSS in wanted and examples:
                items = [_score_item(e.messages, e.reference) for e in examples]
                result.reference_scores = self.clients.score_many(model.model_id, items)
                progress.advance(len(examples))
            if PREFERENCE_ACCURACY in wanted and pairs:
                result.preference_scores = self._preference_scores(model.model_id, pairs)
                progress.advance(len(pairs))
            if JUDGE in wanted and examples:
                result.judge_scores = self._judge(request, examples, result, progress)
            for name, task_questions in questions.items():
                scores, predictions = benchmarks.score_questions(
                    task_questions, self._raw_scorer(model.model_id)
                )
                result.benchmark_scores[name] = scores
                result.benchmark_predictions[name] = predictions
                result.benchmark_results[name] = benchmarks.benchmark_score(task_questions, scores)
                progress.advance(len(task_questions))
            if model.job_id:
                result.training_curve = self.clients.training_curve(model.job_id)
            outputs.append(result)
        report = build_report(
            job_id,
            examples,
            outputs,
            detector,
            self._rule(request, holds_refusal_rows=any(e.should_refuse for e in examples)),
            request.seed,
            {
                "data": _data_echo(request),
                "max_examples": request.max_examples,
                "sampling": {"max_tokens": sampling.max_tokens, "temperature": sampling.temperature},
                "metrics": sorted(wanted),
                "benchmarks": {spec.name: spec.path for spec in request.benchmarks},
                "off_topic_probes": len(probes) if REFUSAL in wanted else 0,
                "in_domain_probes": len(in_domain) if REFUSAL in wanted else 0,
                "canned_reference_rows": sum(e.canned_reference for e in examples),
                "answer_metric_rows": len(answer_rows(examples)),
            },
        )
        return self._store_report(report)

    # Inputs

    def _examples(self, request: eval_pb2.CreateRunRequest) -> tuple[list[Example], str]:
        source = request.data.WhichOneof("source")
        if source is None:
            return [], request.refusal_text
        if source == "prepared_version_id":
            rows = self.clients.prepared_examples(
                request.data.prepared_version_id, request.data.split or "test"
            )
        else:
            rows = self.clients.dataset_rows(request.data.dataset_id)
        limit = request.max_examples or self.settings.default_max_examples
        examples: list[Example] = []
        refusal_answers: Counter[str] = Counter()
        for row in rows:
            messages = [{"role": m.role, "content": m.content} for m in row.messages]
            last_answer = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=-1)
            if last_answer < 1:
                continue  # nothing to compare against, or no question before the answer
            reference = messages[last_answer]["content"]
            if row.is_refusal:
                refusal_answers[reference] += 1
            examples.append(
                Example(
                    len(examples),
                    messages[:last_answer],
                    reference,
                    row.is_refusal,
                    row.source_line,
                    rejected=row.rejected or None,
                )
            )
            if limit and len(examples) >= limit:
                break
        if not examples:
            raise InvalidArgument(
                "the evaluation data holds no question with a reference answer", field="data"
            )
        # The refusal the model was taught is the one its training data used, unless the caller says otherwise.
        taught = refusal_answers.most_common(1)[0][0] if refusal_answers else ""
        return examples, request.refusal_text or taught

    def _sampling(self, request: eval_pb2.CreateRunRequest) -> inference_pb2.SamplingParams:
        sampling = inference_pb2.SamplingParams()
        sampling.CopyFrom(request.generation)
        if sampling.max_tokens <= 0:
            sampling.max_tokens = self.settings.default_max_tokens
        if request.seed and not sampling.HasField("seed"):
            sampling.seed = request.seed
        return sampling  # temperature 0 (the proto default) is greedy: reproducible runs

    def _rule(self, request: eval_pb2.CreateRunRequest, holds_refusal_rows: bool) -> Rule:
        """The caller's fields as given; the rest from the service's defaults, or, for data that teaches
        refusing (refusal rows in the evaluated split), the refusal rule's."""
        given = request.promotion_rule
        caller_set = {
            name
            for name in ("min_delta", "min_refusal_rate", "max_wrong_refusal_rate")
            if given.HasField(name)
        }
        rule = Rule(
            given.primary_metric or self.settings.primary_metric,
            given.min_delta if "min_delta" in caller_set else self.settings.min_delta,
            given.min_refusal_rate if "min_refusal_rate" in caller_set else self.settings.min_refusal_rate,
            given.max_wrong_refusal_rate
            if "max_wrong_refusal_rate" in caller_set
            else self.settings.max_wrong_refusal_rate,
        )
        return with_refusal_defaults(rule, caller_set) if holds_refusal_rows else rule

    # Model calls

    def _preference_scores(self, model_id: str, pairs: list[Example]) -> list[tuple[float, float]]:
        """(chosen, rejected) mean log-prob per completion token for each pair, scored after its prompt."""
        items = [_score_item(e.messages, e.reference) for e in pairs]
        items += [_score_item(e.messages, e.rejected or "") for e in pairs]
        scores = [logprob / max(1, tokens) for logprob, tokens in self.clients.score_many(model_id, items)]
        return list(zip(scores[: len(pairs)], scores[len(pairs) :], strict=True))

    def _raw_scorer(self, model_id: str) -> benchmarks.ScoreFn:
        def score(pairs: list[tuple[str, str]]) -> list[tuple[float, int]]:
            items = [inference_pb2.ScoreItem(prompt=prompt, continuation=cont) for prompt, cont in pairs]
            return self.clients.score_many(model_id, items)

        return score

    def _judge(
        self,
        request: eval_pb2.CreateRunRequest,
        examples: list[Example],
        outputs: ModelOutputs,
        progress: "_Progress",
    ) -> list[float]:
        """Grades 1..5 from the judge model, mapped to 0..1; an unparseable reply counts as the lowest."""
        rubric = request.judge_rubric or self.settings.judge_rubric
        prompts = [
            [
                {"role": "system", "content": rubric},
                {
                    "role": "user",
                    "content": f"QUESTION: {e.question}\nREFERENCE: {e.reference}\nANSWER: {a.text}",
                },
            ]
            for e, a in zip(examples, outputs.answers, strict=True)
        ]
        sampling = inference_pb2.SamplingParams(max_tokens=8, temperature=0.0)
        judge = self.clients.resolve_model(request.judge_model or self.settings.judge_model)
        replies = self.clients.generate_many(judge.model_id, prompts, sampling, progress.step)
        grades = []
        for reply in replies:
            match = _GRADE.search(reply.text)
            grades.append((int(match.group(1)) - 1) / 4 if match else 0.0)
        return grades

    # Output

    def _store_report(self, report: dict[str, Any]) -> dict[str, Any]:
        json_artifact = self.artifacts.put_bytes(json.dumps(report, indent=1).encode())
        html_artifact = self.artifacts.put_bytes(render_html(report).encode())
        return {
            "report_json": {
                "uri": json_artifact.uri,
                "sha256": json_artifact.sha256,
                "size": json_artifact.size_bytes,
            },
            "report_html": {
                "uri": html_artifact.uri,
                "sha256": html_artifact.sha256,
                "size": html_artifact.size_bytes,
            },
            "verdict": report["verdict"],
            "verdict_reasons": report["verdict_reasons"],
            "summaries": summary_rows(report),
            **candidate_verdicts(report),
        }


def candidate_verdicts(report: dict[str, Any]) -> dict[str, Any]:
    """Each candidate's verdict with the model id it was resolved to: the registry's promotion evidence."""
    baseline, *candidates = report["models"]
    return {
        "baseline_model_id": baseline["model_id"],
        "candidate_verdicts": [
            {
                "model": model["label"],
                "model_id": model["model_id"],
                "verdict": report["verdicts"][model["label"]]["verdict"],
                "reasons": report["verdicts"][model["label"]]["reasons"],
            }
            for model in candidates
        ],
    }


def summary_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Flat (model, metric, mean, low, high) rows: each model's metrics, then candidate-minus-baseline."""
    rows = [
        {"model": label, "metric": metric, "mean": s["mean"], "low": s["low"], "high": s["high"]}
        for label, summaries in report["summaries"].items()
        for metric, s in summaries.items()
        if s.get("mean") is not None
    ]
    for candidate, comparisons in report["comparisons"].items():
        for metric, comparison in comparisons.items():
            delta = comparison["delta"]
            if delta.get("mean") is not None:
                rows.append(
                    {
                        "model": f"{candidate} - {report['baseline']}",
                        "metric": metric,
                        "mean": delta["mean"],
                        "low": delta["low"],
                        "high": delta["high"],
                    }
                )
    for label, scores in report["benchmarks"].items():
        rows += [
            {"model": label, "metric": f"benchmark:{task}", "mean": value, "low": value, "high": value}
            for task, value in scores.items()
        ]
    return rows


class _Progress:
    """Turns finished units of work into progress events, and is where cancellation is noticed."""

    def __init__(
        self, store: JobStore, job_id: str, keep_going: Callable[[], bool], models: int, units_per_model: int
    ) -> None:
        self.store = store
        self.job_id = job_id
        self.keep_going = keep_going
        self.total = max(1, models * units_per_model)
        self.finished = 0
        self.since_event = 0
        self.label = ""

    def model(self, label: str) -> None:
        self.label = label
        self.store.emit(self.job_id, EventKind.LOG, message=f"evaluating {label}")

    def step(self, _done_in_call: int) -> bool:
        """A ProgressFn: one generation finished; False asks the caller to stop."""
        self.finished += 1
        self.since_event += 1
        if self.since_event >= 8:
            self._emit()
        return self.keep_going()

    def advance(self, units: int) -> None:
        self.finished += units
        self._emit()
        if not self.keep_going():
            raise JobStopped()

    def _emit(self) -> None:
        self.since_event = 0
        self.store.emit(
            self.job_id,
            EventKind.PROGRESS,
            progress=min(0.99, self.finished / self.total),
            message=self.label,
            metrics={"done": float(self.finished), "total": float(self.total)},
        )


def _work_units(
    examples: list[Example], probes: int, questions: dict[str, list[Any]], wanted: set[str]
) -> int:
    units = len(examples)
    if REFUSAL in wanted:
        units += probes
    if REFERENCE_LOSS in wanted:
        units += len(examples)
    if JUDGE in wanted:
        units += len(examples)
    return units + sum(len(q) for q in questions.values())


def _unique_labels(references: list[str]) -> list[str]:
    seen: Counter[str] = Counter()
    labels = []
    for reference in references:
        seen[reference] += 1
        labels.append(reference if seen[reference] == 1 else f"{reference}#{seen[reference]}")
    return labels


def _user(question: str) -> Messages:
    return [{"role": "user", "content": question}]


def _score_item(messages: Messages, reference: str) -> inference_pb2.ScoreItem:
    return inference_pb2.ScoreItem(
        context=[common_pb2.ChatMessage(role=m["role"], content=m["content"]) for m in messages],
        continuation=reference,
    )


def _data_echo(request: eval_pb2.CreateRunRequest) -> dict[str, str]:
    source = request.data.WhichOneof("source")
    if source is None:
        return {}
    return {source: getattr(request.data, source), "split": request.data.split or "test"}


def _classify_references(examples: list[Example], detector: RefusalDetector) -> list[Example]:
    """Rows whose reference is the taught refusal must be refused (hand-written off-topic rows, not only
    generated ones); counting them as in-domain would call a right refusal wrong. A reference repeated
    word for word across CANNED_REFERENCE_ROWS rows is a stock reply, not an answer to its question."""
    repeats = Counter(e.reference.strip() for e in examples)
    classified = []
    for example in examples:
        refuse = example.should_refuse or detector.is_refusal(example.reference)
        canned = not refuse and repeats[example.reference.strip()] >= CANNED_REFERENCE_ROWS
        classified.append(replace(example, should_refuse=refuse, canned_reference=canned))
    return classified

"""Evaluation runs through EvalService: the list, creating a run, the report (read from its JSON twin and
shaped for the page: metrics with intervals, verdicts, error categories, the side-by-side table with its
filters) and the comparison of two runs."""

import json
from dataclasses import dataclass, field
from typing import Any

from finetune.v1 import common_pb2, eval_pb2
from services.console.peers import ConsoleError, Peers, call
from services.console.protocol_evaluations import EvalForm

# The eval service's metrics where a smaller value is the better one (its report says so only implicitly).
LOWER_IS_BETTER = {"reference_loss", "reference_perplexity"}
OUTCOMES = ("win", "loss", "tie")
EXAMPLES_SHOWN = 200
SERVICE = "eval service"


@dataclass(frozen=True)
class RunPage:
    runs: list[eval_pb2.EvalRun]
    next_page_token: str


@dataclass(frozen=True)
class ModelValue:
    mean: float
    low: float
    high: float
    n: int


@dataclass(frozen=True)
class MetricRow:
    metric: str
    values: dict[str, ModelValue | None]  # model label -> its interval (None: not measured for it)
    deltas: dict[str, dict[str, Any]]  # candidate label -> the report's comparison with the baseline
    axis_low: float
    axis_high: float


@dataclass(frozen=True)
class ExampleFilter:
    candidate: str
    category: str = ""
    category_model: str = ""
    outcome: str = ""


@dataclass
class ReportView:
    run: eval_pb2.EvalRun
    report: dict[str, Any]
    labels: list[str]
    baseline: str
    candidates: list[str]
    primary_metric: str
    metrics: list[MetricRow]
    categories: dict[str, dict[str, int]]  # category -> model label -> count
    examples: list[dict[str, Any]] = field(default_factory=list)  # after the filter, at most EXAMPLES_SHOWN
    matching: int = 0  # rows the filter matched


def _value(summary: dict[str, Any] | None) -> ModelValue | None:
    if not summary or summary.get("mean") is None:
        return None
    mean = float(summary["mean"])
    low = summary.get("low")
    high = summary.get("high")
    return ModelValue(
        mean, mean if low is None else float(low), mean if high is None else float(high), summary.get("n", 0)
    )


def metric_rows(report: dict[str, Any], labels: list[str]) -> list[MetricRow]:
    summaries: dict[str, dict[str, Any]] = report.get("summaries", {})
    comparisons: dict[str, dict[str, Any]] = report.get("comparisons", {})
    names = sorted({name for label in labels for name in summaries.get(label, {})})
    rows = []
    for name in names:
        values = {label: _value(summaries.get(label, {}).get(name)) for label in labels}
        measured = [value for value in values.values() if value is not None]
        if not measured:
            continue
        rows.append(
            MetricRow(
                metric=name,
                values=values,
                deltas={
                    label: comparisons[label][name]
                    for label in labels[1:]
                    if name in comparisons.get(label, {})
                },
                axis_low=min(value.low for value in measured),
                axis_high=max(value.high for value in measured),
            )
        )
    return rows


def outcome(row: dict[str, Any], baseline: str, candidate: str, metric: str) -> str:
    """win, loss or tie of the candidate's answer against the baseline's on `metric` (empty: not scored)."""
    answers = row.get("answers", {})
    try:
        mine = float(answers[candidate]["scores"][metric])
        theirs = float(answers[baseline]["scores"][metric])
    except (KeyError, TypeError, ValueError):
        return ""
    if mine == theirs:
        return "tie"
    better = mine < theirs if metric in LOWER_IS_BETTER else mine > theirs
    return "win" if better else "loss"


def report_view(run: eval_pb2.EvalRun, report: dict[str, Any], chosen: ExampleFilter) -> ReportView:
    labels = [model["label"] for model in report.get("models", [])]
    baseline = report.get("baseline", labels[0] if labels else "")
    candidates = labels[1:]
    primary = str(report.get("rule", {}).get("primary_metric") or "token_f1")
    categories: dict[str, dict[str, int]] = {}
    for label, found in report.get("error_analysis", {}).items():
        for category, summary in found.items():
            categories.setdefault(category, {})[label] = int(summary.get("count", 0))
    view = ReportView(
        run=run,
        report=report,
        labels=labels,
        baseline=baseline,
        candidates=candidates,
        primary_metric=primary,
        metrics=metric_rows(report, labels),
        categories={name: counts for name, counts in categories.items() if any(counts.values())},
    )
    candidate = chosen.candidate if chosen.candidate in candidates else (candidates[-1] if candidates else "")
    category_model = chosen.category_model if chosen.category_model in labels else (candidate or baseline)
    matched = []
    for row in report.get("examples", []):
        row_outcome = outcome(row, baseline, candidate, primary) if candidate else ""
        if chosen.outcome and row_outcome != chosen.outcome:
            continue
        answer = row.get("answers", {}).get(category_model, {})
        if chosen.category and answer.get("error_category") != chosen.category:
            continue
        matched.append({**row, "outcome": row_outcome})
    view.examples = matched[:EXAMPLES_SHOWN]
    view.matching = len(matched)
    return view


@dataclass(frozen=True)
class Comparison:
    runs: list[eval_pb2.EvalRun]
    columns: list[str]  # "<run id>/<label>"
    rows: list[tuple[str, dict[str, eval_pb2.MetricSummary]]]  # metric -> column -> summary


class EvaluationsServing:
    def __init__(self, peers: Peers, page_size: int) -> None:
        self.peers = peers
        self.page_size = page_size

    def page(self, page_token: str) -> RunPage:
        reply = call(
            SERVICE,
            self.peers.eval.ListRuns,
            eval_pb2.ListRunsRequest(
                page=common_pb2.PageRequest(page_size=self.page_size, page_token=page_token)
            ),
        )
        return RunPage(list(reply.runs), reply.next_page_token)

    def run(self, run_id: str) -> eval_pb2.EvalRun:
        return call(SERVICE, self.peers.eval.GetRun, eval_pb2.GetRunRequest(id=run_id))

    def create(self, form: EvalForm) -> eval_pb2.EvalRun:
        return call(SERVICE, self.peers.eval.CreateRun, form.request())

    def report(self, run: eval_pb2.EvalRun, chosen: ExampleFilter) -> ReportView | None:
        """The report of a finished run; None while it runs (or when it failed, which the run says)."""
        if run.status.state != common_pb2.JOB_STATE_SUCCEEDED:
            return None
        reply = call(SERVICE, self.peers.eval.GetReport, eval_pb2.GetRunRequest(id=run.status.id))
        try:
            report = json.loads(reply.report_json)
        except ValueError as err:
            raise ConsoleError(f"the run's report is not JSON: {err}", 502, SERVICE) from None
        return report_view(run, report, chosen)

    def compare(self, run_ids: list[str]) -> Comparison:
        runs = [self.run(run_id) for run_id in run_ids]
        reply = call(SERVICE, self.peers.eval.CompareRuns, eval_pb2.CompareRunsRequest(run_ids=run_ids))
        columns: list[str] = []
        by_metric: dict[str, dict[str, eval_pb2.MetricSummary]] = {}
        for summary in reply.summaries:
            if summary.model not in columns:
                columns.append(summary.model)
            by_metric.setdefault(summary.metric, {})[summary.model] = summary
        return Comparison(runs, columns, sorted(by_metric.items()))

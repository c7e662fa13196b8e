"""`ftctl eval`: evaluate models against each other, follow runs, read and compare reports."""

import tempfile
import webbrowser
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape

from finetune.v1 import common_pb2, eval_pb2, eval_pb2_grpc
from ftcommon.specs.evaluate import EvalSpec
from ftcommon.specs.proto_bridge import validate_spec
from ftctl.common import (
    JSON_OPTION,
    STATE_NAMES,
    addresses,
    console,
    follow_job,
    print_json,
    print_table,
    rpc_errors,
    spec_errors,
    stub,
)

app = typer.Typer(no_args_is_help=True)

VERDICT_NAMES = {
    eval_pb2.VERDICT_UNSPECIFIED: "-",
    eval_pb2.VERDICT_PASS: "PASS",
    eval_pb2.VERDICT_FAIL: "FAIL",
}
# A run on CPU can take a long while; the watch stream reconnects after this many seconds without end.
WATCH_TIMEOUT_SECONDS = 24 * 3600
BENCHMARK_OPTION = typer.Option([], "--benchmark", help="NAME=PATH (mmlu, openbookqa, arc, truthfulqa_mc).")
OUTPUT_OPTION = typer.Option(None, "--output", "-o", help="Where to write the HTML report.")
OFF_TOPIC_OPTION = typer.Option(
    None, "--off-topic-probes", help="A text file of questions that must be refused, one a line.", exists=True
)
IN_DOMAIN_OPTION = typer.Option(
    None,
    "--in-domain-probes",
    help="A text file of in-domain questions that must not be refused, one a line.",
    exists=True,
)


def _lines(path: Path | None) -> list[str]:
    return [] if path is None else [line.strip() for line in path.read_text().splitlines() if line.strip()]


def _eval_stub() -> eval_pb2_grpc.EvalServiceStub:
    return stub(eval_pb2_grpc.EvalServiceStub, addresses().eval_address)


def _benchmark(spec: str, limit: int) -> dict[str, Any]:
    name, separator, path = spec.partition("=")
    if not separator or not name or not path:
        raise typer.BadParameter(
            f"{spec!r}: expected NAME=PATH, e.g. mmlu=../shared/datasets/benchmarks/mmlu"
        )
    return {"name": name, "path": str(Path(path).resolve()), "limit": limit}


def eval_spec(
    models: str,
    data: dict[str, str],
    benchmarks: list[str],
    benchmark_limit: int,
    metrics: str,
    rule: dict[str, Any],
    probes: dict[str, Path | None],
    **given: Any,
) -> EvalSpec:
    """What `eval run` asks for: comma-separated models and metrics, the data (prepared_version_id or
    dataset_id, split), NAME=PATH benchmarks with one limit, the promotion rule's fields (None: not given, so
    the service's data-dependent default holds), probes files, and EvalSpec's own fields as `given`
    (max_tokens for generation). Empty values are not given: the spec's or the service's defaults hold."""
    values: dict[str, Any] = {name: value for name, value in given.items() if value}
    if "max_tokens" in values:
        values["generation"] = {"max_tokens": values.pop("max_tokens")}
    values |= {
        "models": models.split(","),
        "metrics": metrics.split(","),
        "data": {name: value for name, value in data.items() if value},
        "benchmarks": [_benchmark(spec, benchmark_limit) for spec in benchmarks],
        **{name: _lines(path) for name, path in probes.items()},
    }
    if given_rule := {name: value for name, value in rule.items() if value not in (None, "")}:
        values["promotion_rule"] = given_rule
    with spec_errors("options"):
        return validate_spec(EvalSpec, values)


@app.command("run")
def run(
    models: str = typer.Option(
        ..., "--models", help="Comma-separated ids, names or aliases; the first is the baseline."
    ),
    dataset: str = typer.Option("", "--dataset", help="A prepared version id (its --split is evaluated)."),
    eval_set: str = typer.Option("", "--eval-set", help="An uploaded dataset id to evaluate on instead."),
    split: str = typer.Option("test", "--split"),
    max_examples: int = typer.Option(0, "--max-examples", help="0 evaluates the whole split."),
    max_tokens: int = typer.Option(0, "--max-tokens", help="0: the service's default."),
    benchmark: list[str] = BENCHMARK_OPTION,
    benchmark_limit: int = typer.Option(0, "--benchmark-limit", help="Questions per benchmark; 0: all."),
    metrics: str = typer.Option("", "--metrics", help="Comma-separated; empty: all."),
    seed: int = typer.Option(0, "--seed"),
    primary_metric: str = typer.Option("", "--primary-metric"),
    min_delta: float | None = typer.Option(None, "--min-delta"),
    min_refusal_rate: float | None = typer.Option(
        None, "--min-refusal-rate", help="Unset: 0.9 for data with refusal rows, else no check."
    ),
    max_wrong_refusal_rate: float | None = typer.Option(
        None, "--max-wrong-refusal-rate", help="Unset: 0.05 for data with refusal rows, else the service's."
    ),
    off_topic_probes: Path | None = OFF_TOPIC_OPTION,
    in_domain_probes: Path | None = IN_DOMAIN_OPTION,
    refusal_text: str = typer.Option("", "--refusal-text", help="The refusal the model was taught."),
    judge_model: str = typer.Option("", "--judge-model", help="Turns on LLM-as-judge with this model."),
    detach: bool = typer.Option(False, "--detach", help="Print the run and return without following it."),
    show_json: bool = JSON_OPTION,
) -> None:
    """Start an evaluation run and follow its progress to the verdict."""
    request = eval_spec(
        models,
        {"prepared_version_id": dataset, "dataset_id": "" if dataset else eval_set, "split": split},
        benchmark,
        benchmark_limit,
        metrics,
        {
            "primary_metric": primary_metric,
            "min_delta": min_delta,
            "min_refusal_rate": min_refusal_rate,
            "max_wrong_refusal_rate": max_wrong_refusal_rate,
        },
        {"off_topic_probes": off_topic_probes, "in_domain_probes": in_domain_probes},
        max_examples=max_examples,
        max_tokens=max_tokens,
        seed=seed,
        refusal_text=refusal_text,
        judge_model=judge_model,
    ).to_request()
    service = _eval_stub()
    with rpc_errors():
        created = service.CreateRun(request)
        run_id = created.status.id
        if detach:
            _show_run(created, show_json)
            return
        if not show_json:
            console.print(f"run [bold]{run_id}[/bold]")
        events = service.WatchRun(common_pb2.WatchRequest(id=run_id), timeout=WATCH_TIMEOUT_SECONDS)
        final = follow_job(events, f"eval {run_id}", show_json)
        finished = service.GetRun(eval_pb2.GetRunRequest(id=run_id))
    _show_run(finished, show_json)
    if final != common_pb2.JOB_STATE_SUCCEEDED:
        raise typer.Exit(1)


@app.command("show")
def show(run_id: str, show_json: bool = JSON_OPTION) -> None:
    """A run's state, summaries and verdict."""
    with rpc_errors():
        _show_run(_eval_stub().GetRun(eval_pb2.GetRunRequest(id=run_id)), show_json)


@app.command("report")
def report(
    run_id: str,
    output: Path | None = OUTPUT_OPTION,
    open_browser: bool = typer.Option(False, "--open", help="Open the HTML report in a browser."),
    show_json: bool = JSON_OPTION,
) -> None:
    """Fetch a run's report: the JSON twin with --json, else the verdict and the HTML file's path."""
    with rpc_errors():
        fetched = _eval_stub().GetReport(eval_pb2.GetRunRequest(id=run_id))
    if show_json:
        print(fetched.report_json)
        return
    target = output or Path(tempfile.gettempdir()) / f"{run_id}.html"
    target.write_text(fetched.report_html, encoding="utf-8")
    console.print(f"verdict [bold]{VERDICT_NAMES[fetched.verdict]}[/bold]")
    for reason in fetched.verdict_reasons:
        console.print(f"  - {escape(reason)}")
    print(target)
    if open_browser:
        webbrowser.open(target.resolve().as_uri())


@app.command("list")
def list_runs(
    page_size: int = typer.Option(20, "--page-size"),
    page_token: str = typer.Option("", "--page-token"),
    show_json: bool = JSON_OPTION,
) -> None:
    """Evaluation runs, newest first."""
    with rpc_errors():
        response = _eval_stub().ListRuns(
            eval_pb2.ListRunsRequest(page=common_pb2.PageRequest(page_size=page_size, page_token=page_token))
        )
    if show_json:
        print_json(response)
        return
    print_table(
        "evaluation runs",
        ["id", "state", "progress", "models", "verdict"],
        [
            (
                r.status.id,
                STATE_NAMES.get(r.status.state, "?"),
                f"{r.status.progress:.0%}",
                ",".join(r.request.models),
                VERDICT_NAMES[r.verdict],
            )
            for r in response.runs
        ],
    )
    if response.next_page_token:
        console.print(f"next page: --page-token {response.next_page_token}")


@app.command("cancel")
def cancel(run_id: str, show_json: bool = JSON_OPTION) -> None:
    """Cancel a queued or running evaluation."""
    with rpc_errors():
        _show_run(_eval_stub().CancelRun(eval_pb2.GetRunRequest(id=run_id)), show_json)


@app.command("compare")
def compare(run_ids: list[str], show_json: bool = JSON_OPTION) -> None:
    """Metric summaries of several runs side by side."""
    with rpc_errors():
        response = _eval_stub().CompareRuns(eval_pb2.CompareRunsRequest(run_ids=run_ids))
    if show_json:
        print_json(response)
        return
    metrics = sorted({s.metric for s in response.summaries})
    models = list(dict.fromkeys(s.model for s in response.summaries))
    values = {
        (s.model, s.metric): f"{s.mean:.4f} [{s.ci_low:.4f}, {s.ci_high:.4f}]" for s in response.summaries
    }
    print_table(
        "comparison", ["metric", *models], [(m, *(values.get((x, m), "-") for x in models)) for m in metrics]
    )


def _show_run(run: eval_pb2.EvalRun, show_json: bool) -> None:
    if show_json:
        print_json(run)
        return
    console.print(
        f"run [bold]{run.status.id}[/bold]: {STATE_NAMES.get(run.status.state, '?')}"
        + (f" ({escape(run.status.error)})" if run.status.error else "")
    )
    if run.summaries:
        print_table(
            "metrics (mean, 95% interval)",
            ["model", "metric", "mean", "interval"],
            [
                (s.model, s.metric, f"{s.mean:.4f}", f"[{s.ci_low:.4f}, {s.ci_high:.4f}]")
                for s in run.summaries
            ],
        )
    if run.verdict:
        console.print(f"verdict [bold]{VERDICT_NAMES[run.verdict]}[/bold]")
        for reason in run.verdict_reasons:
            console.print(f"  - {escape(reason)}")
    if run.report_html.uri:
        console.print(f"report ({escape(run.report_html.uri)}): ftctl eval report {run.status.id} --open")

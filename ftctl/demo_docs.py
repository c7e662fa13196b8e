"""`make demo-docs`: a chatbot for the project's own documents, with no question-answer pair written by hand.

Starts the four services, uploads the hand-written questions (samples/docs_questions.jsonl: evaluation only,
and the generation's contamination guard), generates the training set from docs/*.md and README.md
(pipelines/docs_demo.yaml's documents section), prepares it split by phrasing within a fact, trains,
evaluates base against tuned on the held-out phrasings (the run the promotion rule judges) and on the
hand-written questions, promotes when the rule passes, asks a few questions of each kind side by side, and
stops everything. `main` returns the figures (benchmarks/generate.py --quality writes them down).
"""

import json
import shutil
import time
from pathlib import Path
from typing import Any

from openai import OpenAI
from rich.markup import escape
from rich.table import Table

from finetune.v1 import common_pb2, data_pb2, eval_pb2, trainer_pb2
from ftcommon.specs.evaluate import EvalData
from ftctl.common import console, follow_job, stdout
from ftctl.data import upload_requests
from ftctl.demo import BASE_MODEL_DIR, ask
from ftctl.keys import bootstrap_admin_token, create_api_key
from ftctl.local_stack import StackPorts, refuse_running_stack, running_stack
from ftctl.pipeline import WATCH_TIMEOUT_SECONDS, PipelineFailed, PipelineRunner
from ftctl.pipeline_spec import load_spec

REPO_ROOT = Path(__file__).resolve().parent.parent
DOCS_DEMO_SPEC = REPO_ROOT / "pipelines" / "docs_demo.yaml"
DOCS_QUESTIONS = REPO_ROOT / "samples" / "docs_questions.jsonl"
CHAT_QUESTIONS = 3  # of each kind (held-out phrasing, hand-written), asked side by side
REPORTED_METRICS = ("fact_accuracy", "token_f1", "rouge_l", "exact_match")


def main(
    data_root: Path = REPO_ROOT / "var" / "demo-docs",
    spec_path: Path = DOCS_DEMO_SPEC,
    questions_path: Path = DOCS_QUESTIONS,
    ports: StackPorts | None = None,
    chat_questions: int = CHAT_QUESTIONS,
    **stack_env: str,
) -> dict[str, Any]:
    """Runs the demo in `data_root` (wiped first) and returns its figures; `stack_env` goes to every service."""
    started = time.monotonic()
    refuse_running_stack(data_root)  # never wipe (or stop) another demo's stack
    shutil.rmtree(data_root, ignore_errors=True)
    spec = load_spec(spec_path)
    if spec.documents is None:
        raise PipelineFailed(f"{spec_path}: the documents demo needs a documents section")
    if ports is None:
        ports, notes = StackPorts.from_environment().with_free_ports()
        for note in notes:
            console.print(note, markup=False)
    seconds: dict[str, float] = {}
    console.rule("[bold]starting the four services")
    with running_stack(data_root, ports, **stack_env) as stack:
        addresses = stack.ports.addresses()
        runner = PipelineRunner(spec, data_root / "pipelines" / f"{spec.name}.json", addresses)
        runner.trainer.RegisterBaseModel(
            trainer_pb2.RegisterBaseModelRequest(name=spec.base_model, path=str(BASE_MODEL_DIR)), timeout=300
        )
        client = OpenAI(
            base_url=f"{addresses.gateway_url}/v1",
            api_key=create_api_key(addresses.gateway_url, bootstrap_admin_token(stack.environment()), "demo")[
                "secret"
            ],
            timeout=300,
        )
        console.rule("[bold]hand-written questions (evaluation only), then the training set from the docs")
        questions_id = upload_questions(runner, questions_path)
        # The contamination guard: a generated question that duplicates a hand-written one is dropped.
        spec.documents.generate = spec.documents.generate.model_copy(
            update={"eval_dataset_ids": [questions_id]}
        )
        step_started = time.monotonic()
        runner.upload()
        runner.prepare()
        seconds["generate_and_prepare"] = time.monotonic() - step_started
        console.rule("[bold]train")
        step_started = time.monotonic()
        runner.train()
        seconds["train"] = time.monotonic() - step_started
        console.rule("[bold]evaluate base vs tuned: held-out phrasings, then hand-written questions")
        step_started = time.monotonic()
        runner.evaluate()
        hand_written_run = evaluate_questions(runner, questions_id)
        seconds["evaluate"] = time.monotonic() - step_started
        runner.promote()
        report_path = runner.save_report()
        tuned = spec.promote_alias if runner.state.promoted_alias else runner.state.merged_model_id
        console.rule(f"[bold]chat: the base model and '{tuned}' side by side")
        chat = side_by_side(runner, client, questions_path, tuned, chat_questions)
        results = figures(runner, hand_written_run, questions_id)
        show_figures(results)
        console.print(f"report: {report_path}")
    seconds["total"] = time.monotonic() - started
    results["seconds"] = {name: round(value, 1) for name, value in seconds.items()}
    results["chat"] = chat
    console.print(f"documents demo finished in {seconds['total']:.0f}s; services stopped")
    return results


def upload_questions(runner: PipelineRunner, path: Path) -> str:
    metadata = data_pb2.UploadMetadata(
        options=data_pb2.IngestOptions(name="docs-questions"),
        filename=path.name,
        size_bytes=path.stat().st_size,
    )
    dataset = runner.data.UploadDataset(upload_requests(metadata, path), timeout=600)
    console.print(f"[green]✓[/green] hand-written questions {dataset.id}: {dataset.counts.rows_kept} rows")
    return dataset.id


def evaluate_questions(runner: PipelineRunner, questions_id: str) -> str:
    """The pipeline's eval section on the hand-written questions, base against tuned; returns the run id."""
    spec = runner.spec
    request = spec.eval.model_copy(
        update={
            "models": [spec.base_model, runner.state.merged_model_id],
            "data": EvalData(dataset_id=questions_id),
            "seed": spec.prepare.seed,
            "idempotency_key": f"demo-docs:{runner.state.merged_model_id}:{questions_id}",
        }
    ).to_request()
    run = runner.eval.CreateRun(request)
    events = runner.eval.WatchRun(common_pb2.WatchRequest(id=run.status.id), timeout=WATCH_TIMEOUT_SECONDS)
    follow_job(events, f"evaluate {run.status.id}")
    run = runner.eval.GetRun(eval_pb2.GetRunRequest(id=run.status.id))
    if run.status.state != common_pb2.JOB_STATE_SUCCEEDED:
        raise PipelineFailed(f"evaluation {run.status.id} on the hand-written questions: {run.status.error}")
    return run.status.id


def side_by_side(
    runner: PipelineRunner, client: OpenAI, questions_path: Path, tuned: str, count: int
) -> list[dict[str, str]]:
    """The first held-out phrasings and hand-written questions, asked of both models through the gateway."""
    page = runner.data.ReadPreparedExamples(
        data_pb2.ReadPreparedExamplesRequest(
            version_id=runner.state.prepared_version_id,
            split="test",
            page=common_pb2.PageRequest(page_size=count),
        )
    )
    asked = [
        ("held-out phrasing", [m.content for m in e.messages if m.role == "user"][-1], e.messages[-1].content)
        for e in page.examples[:count]
    ]
    rows = [json.loads(line) for line in questions_path.read_text().splitlines() if line.strip()]
    asked += [("hand-written", row["question"], row["answer"]) for row in rows[:count]]
    prompts = [[{"role": "user", "content": question}] for _, question, _ in asked]
    before, after = ask(client, runner.spec.base_model, prompts), ask(client, tuned, prompts)
    table = Table(title="Questions about the docs: base model vs tuned model", show_lines=True)
    for column, ratio in (("kind", 1), ("question", 2), ("the docs say", 3), ("base", 3), ("tuned", 3)):
        table.add_column(column, ratio=ratio)
    chat = []
    for (kind, question, reference), old, new in zip(asked, before, after, strict=True):
        table.add_row(kind, question, reference, old, new)
        chat.append({"kind": kind, "question": question, "reference": reference, "base": old, "tuned": new})
    stdout.print(table)
    return chat


def figures(runner: PipelineRunner, hand_written_run: str, questions_id: str) -> dict[str, Any]:
    """What the demo measured: the training set, the training, both evaluations and the verdict."""
    job = runner.trainer.GetJob(trainer_pb2.GetJobRequest(id=runner.state.train_job_id))
    generated = runner.generation_report
    held_out = evaluation_figures(runner, runner.state.eval_run_id)
    return {
        "dataset": {
            "documents": [str(p.relative_to(REPO_ROOT)) for p in runner.spec.documents.paths]
            if all(p.is_relative_to(REPO_ROOT) for p in runner.spec.documents.paths)
            else [str(p) for p in runner.spec.documents.paths],
            "pairs_generated": generated.pairs_generated if generated else None,
            "pairs_kept": generated.pairs_kept if generated else None,
            "facts_kept": generated.facts_kept if generated else None,
            "rejected_by_reason": dict(generated.rejected_by_reason) if generated else {},
            "eval_questions_checked": generated.eval_questions if generated else None,
            "hand_written_questions_dataset": questions_id,
        },
        "prepared_version_id": runner.state.prepared_version_id,
        "training": {
            "job_id": runner.state.train_job_id,
            "hyperparameters": runner.spec.hyperparameters.model_dump(mode="json", exclude_unset=True),
            "metrics": dict(job.metrics),
            "first_loss": held_out.pop("first_training_loss"),
        },
        "held_out_phrasings": held_out,
        "hand_written": evaluation_figures(runner, hand_written_run),
        "verdict": runner.state.verdict,
        "verdict_reasons": list(runner.state.verdict_reasons),
        "promoted": bool(runner.state.promoted_alias),
    }


def evaluation_figures(runner: PipelineRunner, run_id: str) -> dict[str, Any]:
    """Base and tuned means with their 95% intervals, and the paired delta, from a run's report."""
    report = json.loads(runner.eval.GetReport(eval_pb2.GetRunRequest(id=run_id)).report_json)
    baseline = report["baseline"]
    [candidate] = [m["label"] for m in report["models"] if m["label"] != baseline]
    curve = report.get("training_curves", {}).get(candidate, [])
    losses = [point["loss"] for point in curve if "loss" in point]
    return {
        "run_id": run_id,
        "questions": report["settings"]["answer_metric_rows"],
        "metrics": {
            metric: {
                "base": report["summaries"][baseline].get(metric),
                "tuned": report["summaries"][candidate].get(metric),
                "delta": report["comparisons"][candidate].get(metric, {}).get("delta"),
            }
            for metric in REPORTED_METRICS
        },
        "first_training_loss": losses[0] if losses else None,
    }


def show_figures(results: dict[str, Any]) -> None:
    table = Table(title="Base vs tuned, means with 95% intervals")
    for column in ("questions", "metric", "base", "tuned", "tuned - base"):
        table.add_column(column)
    for name, key in (("held-out phrasings", "held_out_phrasings"), ("hand-written", "hand_written")):
        evaluation = results[key]
        for metric, values in evaluation["metrics"].items():
            table.add_row(
                f"{name} ({evaluation['questions']})",
                metric,
                _interval(values["base"]),
                _interval(values["tuned"]),
                _interval(values["delta"]),
            )
    stdout.print(table)
    training = results["training"]
    stdout.print(
        f"training: {training['metrics'].get('steps', 0):.0f} steps, loss {training['first_loss'] or 0:.3f} -> "
        f"{training['metrics'].get('train_loss', 0):.3f}"
    )
    verdict = f"verdict on the held-out phrasings: [bold]{results['verdict']}[/bold]  "
    stdout.print(verdict + escape("; ".join(results["verdict_reasons"])))


def _interval(summary: dict[str, Any] | None) -> str:
    if not summary or summary.get("mean") is None:
        return "-"
    low, high = summary.get("low"), summary.get("high")
    bounds = f" ({low:.3f} .. {high:.3f})" if low is not None and high is not None else ""
    return f"{summary['mean']:.3f}{bounds}"


if __name__ == "__main__":
    main()

"""`make demo`: the whole pipeline on the embedded defaults, as separate service processes on loopback.

Starts the four services, uploads the shipped sample, prepares it, asks the base model five held-out
questions, trains, evaluates base against tuned, promotes when the rule passes, asks the same questions
through the `prod` alias, prints both side by side with the evaluation summary, and stops everything.
"""

import shutil
import time
from pathlib import Path

from openai import OpenAI
from rich.table import Table

from finetune.v1 import common_pb2, data_pb2, eval_pb2, trainer_pb2
from ftctl.common import console, stdout
from ftctl.keys import bootstrap_admin_token, create_api_key
from ftctl.local_stack import StackPorts, refuse_running_stack, running_stack
from ftctl.pipeline import PipelineRunner
from ftctl.pipeline_spec import load_spec

REPO_ROOT = Path(__file__).resolve().parent.parent
DEMO_SPEC = REPO_ROOT / "pipelines" / "demo.yaml"
BASE_MODEL_DIR = REPO_ROOT / "var" / "base_models" / "smollm2-135m-instruct"
IN_DOMAIN_QUESTIONS = 4
OFF_TOPIC_QUESTIONS = 1  # shows the taught refusal next to the base model's answer


def ask(client: OpenAI, model: str, questions: list[list[dict[str, str]]]) -> list[str]:
    answers = []
    for messages in questions:
        reply = client.chat.completions.create(model=model, messages=messages, max_tokens=64, temperature=0)
        answers.append((reply.choices[0].message.content or "").strip())
    return answers


def held_out_questions(runner: PipelineRunner, refusal_text: str) -> list[list[dict[str, str]]]:
    """The first in-domain questions and the first off-topic one of the prepared test split: never trained on."""
    page = runner.data.ReadPreparedExamples(
        data_pb2.ReadPreparedExamplesRequest(
            version_id=runner.state.prepared_version_id,
            split="test",
            page=common_pb2.PageRequest(page_size=100),
        )
    )

    def off_topic(example: data_pb2.Conversation) -> bool:
        # Hand-written off-topic rows of the sample are answered with the refusal but not flagged.
        return example.is_refusal or any(
            m.role == "assistant" and m.content == refusal_text for m in example.messages
        )

    in_domain = [e for e in page.examples if not off_topic(e)][:IN_DOMAIN_QUESTIONS]
    conversations = in_domain + [e for e in page.examples if off_topic(e)][:OFF_TOPIC_QUESTIONS]
    return [
        [{"role": m.role, "content": m.content} for m in c.messages if m.role != "assistant"]
        for c in conversations
    ]


def main(
    data_root: Path = REPO_ROOT / "var" / "demo", spec_path: Path = DEMO_SPEC, ports: StackPorts | None = None
) -> None:
    started = time.monotonic()
    refuse_running_stack(data_root)  # never wipe (or stop) another demo's stack
    shutil.rmtree(data_root, ignore_errors=True)
    spec = load_spec(spec_path)
    if ports is None:
        # Another stack (`ftctl stack up`) may hold the defaults: the demo runs beside it.
        ports, notes = StackPorts.from_environment().with_free_ports()
        for note in notes:
            console.print(note, markup=False)
    console.rule("[bold]starting the four services")
    with running_stack(data_root, ports) as stack:
        addresses = stack.ports.addresses()
        runner = PipelineRunner(spec, data_root / "pipelines" / f"{spec.name}.json", addresses)
        runner.trainer.RegisterBaseModel(
            trainer_pb2.RegisterBaseModelRequest(name=spec.base_model, path=str(BASE_MODEL_DIR)), timeout=300
        )
        admin_token = bootstrap_admin_token(stack.environment())
        client = OpenAI(
            base_url=f"{addresses.gateway_url}/v1",
            api_key=create_api_key(addresses.gateway_url, admin_token, "demo")["secret"],
            timeout=300,
        )
        console.rule("[bold]upload and prepare")
        runner.upload()
        runner.prepare()
        refusal_text = spec.prepare.refusals.refusal_text
        questions = held_out_questions(runner, refusal_text)
        console.rule("[bold]the base model answers held-out questions")
        before = ask(client, spec.base_model, questions)
        console.rule("[bold]train, evaluate, promote")
        runner.train()
        runner.evaluate()
        runner.promote()
        report = runner.save_report()
        if runner.state.promoted_alias:
            console.rule(f"[bold]the same questions to '{spec.promote_alias}' after promotion")
            after = ask(client, spec.promote_alias, questions)
        else:
            # Not promoted: the tuned model still answers, by id, so the comparison shows what the rule refused.
            console.rule("[bold]the same questions to the tuned model (not promoted)")
            after = ask(client, runner.state.merged_model_id, questions)
        show_comparison(questions, before, after)
        show_evaluation(runner)
        console.print(f"report: {report}")
    console.print(f"demo finished in {time.monotonic() - started:.0f}s; services stopped")


def show_comparison(questions: list[list[dict[str, str]]], before: list[str], after: list[str]) -> None:
    table = Table(title="Held-out questions: base model vs tuned model", show_lines=True)
    table.add_column("question", ratio=2)
    table.add_column("base", ratio=3)
    table.add_column("tuned", ratio=3)
    for messages, old, new in zip(questions, before, after, strict=True):
        table.add_row(messages[-1]["content"], old, new)
    stdout.print(table)


def show_evaluation(runner: PipelineRunner) -> None:
    run = runner.eval.GetRun(eval_pb2.GetRunRequest(id=runner.state.eval_run_id))
    table = Table(title=f"Evaluation {run.status.id}")
    for column in ("model", "metric", "mean", "95% interval"):
        table.add_column(column)
    for summary in run.summaries:
        table.add_row(
            summary.model,
            summary.metric,
            f"{summary.mean:.3f}",
            f"{summary.ci_low:.3f} .. {summary.ci_high:.3f}",
        )
    stdout.print(table)
    verdict = eval_pb2.Verdict.Name(run.verdict).removeprefix("VERDICT_")
    stdout.print(f"verdict: [bold]{verdict}[/bold]  " + "; ".join(run.verdict_reasons))


if __name__ == "__main__":
    main()

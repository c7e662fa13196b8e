"""`make demo-docs` cannot rot: the shipped pipeline file loads as the documents flow it claims, and the demo
itself runs end to end at tiny settings (one short doc, three optimizer steps, four held-out phrasings and
three hand-written questions) over real services on loopback, promotes and chats."""

from pathlib import Path

import pytest
import yaml

from ftctl.demo_docs import DOCS_DEMO_SPEC, DOCS_QUESTIONS
from ftctl.demo_docs import main as docs_demo
from ftctl.local_stack import StackPorts, free_ports
from ftctl.pipeline_spec import load_spec

REPO_ROOT = Path(__file__).resolve().parent.parent


def test_the_shipped_docs_demo_generates_from_the_docs_and_splits_by_phrasing():
    spec = load_spec(DOCS_DEMO_SPEC)
    assert spec.dataset is None and spec.documents is not None
    assert set(spec.documents.paths) == {REPO_ROOT / "docs", REPO_ROOT / "README.md"}
    assert spec.prepare.split_by == "fact_phrasing"
    assert spec.eval.promotion_rule.primary_metric == "fact_accuracy"
    # The hand-written questions are asked, never generated from: not among the documents.
    assert not any(DOCS_QUESTIONS.is_relative_to(p) for p in spec.documents.paths)


def tiny_docs_pipeline(folder: Path) -> Path:
    spec = {
        "name": "docs-demo-tiny",
        "base_model": "smollm2-135m-instruct",
        "documents": {
            "paths": [str(REPO_ROOT / "docs" / "conventions.md")],
            "name": "conventions",
            "generate": {"phrasings_per_fact": 3, "max_answer_chars": 200},
        },
        "prepare": {"max_seq_len": 128, "split": [0.8, 0.1, 0.1], "split_by": "fact_phrasing"},
        "hyperparameters": {"lora_rank": 4, "max_steps": 3, "batch_size": 2, "learning_rate": 0.001},
        "eval": {
            "max_examples": 4,
            "metrics": ["token_f1"],
            "generation": {"max_tokens": 8},
            # Three steps teach nothing: a rule any run passes, so the promotion and the chat happen.
            "promotion_rule": {
                "primary_metric": "token_f1",
                "min_delta": -1.0,
                "min_refusal_rate": 0.0,
                "max_wrong_refusal_rate": 1.0,  # four questions cannot show the evaluator's default
            },
        },
    }
    path = folder / "docs_demo.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.mark.slow
def test_docs_demo_runs_end_to_end_at_tiny_settings(tmp_path, default_model_dir):
    questions = tmp_path / "questions.jsonl"
    questions.write_text("".join(DOCS_QUESTIONS.read_text().splitlines(keepends=True)[:3]))

    results = docs_demo(
        data_root=tmp_path / "var",
        spec_path=tiny_docs_pipeline(tmp_path),
        questions_path=questions,
        ports=StackPorts(*free_ports(6)),
        chat_questions=1,
        FT_INFERENCE_ENGINE="transformers",  # starts in seconds; the demo itself serves with the default
    )

    dataset = results["dataset"]
    assert dataset["pairs_kept"] > 0 and dataset["facts_kept"] > 0
    assert dataset["eval_questions_checked"] == 3, "the hand-written questions did not guard the generation"
    assert results["training"]["metrics"]["steps"] == 3
    assert results["training"]["metrics"]["train_loss"] > 0 and results["training"]["first_loss"] > 0
    held_out, hand_written = results["held_out_phrasings"], results["hand_written"]
    assert held_out["questions"] == 4 and hand_written["questions"] == 3
    assert held_out["run_id"] != hand_written["run_id"]
    for evaluation in (held_out, hand_written):
        token_f1 = evaluation["metrics"]["token_f1"]
        assert token_f1["base"]["mean"] is not None and token_f1["tuned"]["mean"] is not None
        assert token_f1["delta"]["low"] <= token_f1["delta"]["mean"] <= token_f1["delta"]["high"]
    # The hand-written references each state a key fact (a port number): fact accuracy is measured.
    assert hand_written["metrics"]["fact_accuracy"]["base"]["n"] == 3
    assert results["verdict"] == "pass" and results["promoted"]
    assert [row["kind"] for row in results["chat"]] == ["held-out phrasing", "hand-written"]
    assert all(row["tuned"] and row["base"] for row in results["chat"])
    assert results["seconds"]["total"] > 0

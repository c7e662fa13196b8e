"""Fact accuracy: does an answer state the reference's key fact (a command, a number or version, a name)."""

import pytest

from ftcommon.refusal_detection import RefusalDetector
from services.eval.analysis import Answer, Example, ModelOutputs, build_report
from services.eval.metrics import fact_accuracy, key_fact
from services.eval.promotion import Rule
from services.eval.statistics import wilson_interval


@pytest.mark.parametrize(
    ("reference", "fact"),
    [
        ("Run `make clean`: it deletes var/ with 3 folders.", "make clean"),  # a command first
        ("The platform needs Python 3.11.", "3.11"),  # then a number or version
        ("The gateway listens on port 8000 by default.", "8000"),
        ("The default learning rate is 1e-3.", "1e-3"),
        ("It is served by vLLM on CPU.", "vLLM"),  # then a name with a capital inside
        ("Deploy it with Kubernetes manifests.", "Kubernetes"),  # or a capitalised word mid-sentence
        ("Python is required.", None),  # a capital that only starts the sentence names nothing
        ("Yes, it does.", None),
    ],
)
def test_key_fact_precedence(reference, fact):
    assert key_fact(reference) == fact


@pytest.mark.parametrize(
    ("prediction", "reference", "score"),
    [
        # The demo's two misses: an invented command and a wrong version.
        ("Use `ftctl data create` to start over.", "Run `make clean` to wipe local data.", 0.0),
        ("`venv` with `py37` on Windows.", "The platform needs Python 3.11.", 0.0),
        # Stated in other words, with or without backticks: counted.
        (
            "Just run make clean and everything under var/ is gone.",
            "Run `make clean` to wipe local data.",
            1.0,
        ),
        ("You need Python 3.11 or the setup fails.", "The platform needs Python 3.11.", 1.0),
        ("It runs on VLLM.", "It is served by vLLM on CPU.", 1.0),  # case ignored
        # Whole tokens only: 3.1 is not 3.11, and port 80 is not 8000.
        ("Python 3.1", "The platform needs Python 3.11.", 0.0),
        ("port 80", "The gateway listens on port 8000.", 0.0),
        ("anything", "Yes, it does.", None),
    ],
)
def test_fact_accuracy_per_answer(prediction, reference, score):
    assert fact_accuracy(prediction, reference) == score


def test_report_gives_fact_accuracy_a_wilson_interval_over_rows_with_a_key_fact():
    references = [
        "Run `make clean` to wipe local data.",
        "The platform needs Python 3.11.",
        "The gateway listens on port 8000.",
        "Yes, it does.",  # no key fact: not counted
    ]
    examples = [
        Example(i, [{"role": "user", "content": f"question {i}?"}], reference, should_refuse=False)
        for i, reference in enumerate(references)
    ]
    base = ModelOutputs(
        "base", "m-base", [Answer(t, False) for t in ["ftctl data create", "py37", "80", "No."]]
    )
    tuned = ModelOutputs(
        "tuned", "m-tuned", [Answer(t, False) for t in ["make clean", "Python 3.11", "port 80", "Yes."]]
    )
    report = build_report("run-f", examples, [base, tuned], RefusalDetector(), Rule(min_delta=0.0), 3, {})
    expected = wilson_interval(2, 3)
    summary = report["summaries"]["tuned"]["fact_accuracy"]
    assert (summary["mean"], summary["low"], summary["high"], summary["n"]) == (
        pytest.approx(2 / 3),
        pytest.approx(expected.low),
        pytest.approx(expected.high),
        3,
    )
    assert report["summaries"]["base"]["fact_accuracy"]["mean"] == 0.0
    comparison = report["comparisons"]["tuned"]["fact_accuracy"]
    assert (comparison["wins"], comparison["losses"], comparison["ties"]) == (2, 0, 1)
    last = report["examples"][3]["answers"]["tuned"]["scores"]
    assert last["fact_accuracy"] is None and last["token_f1"] == 0.5  # the other metrics still score the row

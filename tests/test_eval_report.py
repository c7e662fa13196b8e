"""Benchmark readers and scoring on hand-made files; the report built from known outputs."""

import json
import math
from pathlib import Path

import pytest

from ftcommon.refusal_detection import RefusalDetector
from services.eval import benchmarks
from services.eval.analysis import Answer, Example, ModelOutputs, build_report
from services.eval.promotion import Rule
from services.eval.report import render_html

REFUSAL = "Let's keep the discussion relevant to Lamini."


def test_mmlu_reader_accepts_both_layouts(tmp_path: Path) -> None:
    folder = tmp_path / "mmlu" / "test"
    folder.mkdir(parents=True)
    (folder / "anatomy_test.csv").write_text(
        "question,choice0,choice1,choice2,choice3,answer\nBones?,a,b,c,d,2\nMuscles?,a,b,c,d,0\n"
    )
    (folder / "virology_test.csv").write_text('"Virus, or not?",w,x,y,z,D\n')
    questions = benchmarks.load_questions(benchmarks.MMLU, tmp_path / "mmlu")
    # Round-robin over subjects: anatomy, virology, anatomy.
    assert [q.subject for q in questions] == ["anatomy", "virology", "anatomy"]
    assert questions[0].correct == [False, False, True, False]
    assert questions[1].correct == [False, False, False, True]
    assert questions[0].continuations == [" A", " B", " C", " D"]
    assert questions[0].prompt.endswith("Bones?\nA. a\nB. b\nC. c\nD. d\nAnswer:")
    assert "about anatomy" in questions[0].prompt
    assert len(benchmarks.load_questions(benchmarks.MMLU, tmp_path / "mmlu", limit=2)) == 2


def test_arc_and_truthfulqa_readers(tmp_path: Path) -> None:
    arc = tmp_path / "obqa.jsonl"
    row = {
        "id": "1",
        "question": {
            "stem": "Predators eat",
            "choices": [{"text": "grass", "label": "A"}, {"text": "bunnies", "label": "B"}],
        },
        "answerKey": "B",
    }
    arc.write_text(json.dumps(row) + "\n")
    [question] = benchmarks.load_questions(benchmarks.OPENBOOKQA, arc)
    assert question.prompt == "Question: Predators eat\nAnswer:"
    assert question.continuations == [" grass", " bunnies"]
    assert question.correct == [False, True]
    truthful = tmp_path / "tqa.csv"
    truthful.write_text(
        "Type,Category,Question,Best Answer,Correct Answers,Incorrect Answers,Source\n"
        "A,B,Is the sky green?,No,No; It is blue,Yes,src\n"
    )
    [tqa] = benchmarks.load_questions(benchmarks.TRUTHFULQA_MC, truthful)
    assert tqa.continuations == [" No", " It is blue", " Yes"]
    assert tqa.correct == [True, True, False]
    assert tqa.prompt.endswith("Q: Is the sky green?\nA:")


def test_choice_scoring_hand_computed() -> None:
    acc = benchmarks.Question("mmlu", "s", "p", [" A", " B"], [False, True], "acc")
    assert benchmarks.question_score(acc, [(-2.0, 1), (-1.0, 1)]) == 1.0
    assert benchmarks.question_score(acc, [(-1.0, 1), (-2.0, 1)]) == 0.0
    # acc_norm divides by bytes: " ab" -3/3 = -1.0 per byte, " abcdef" -5.6/7 = -0.8: the longer one wins.
    norm = benchmarks.Question("arc", "arc", "p", [" ab", " abcdef"], [False, True], "acc_norm")
    assert benchmarks.question_score(norm, [(-3.0, 1), (-5.6, 2)]) == 1.0
    # MC2: probabilities 0.2 and 0.3 on true answers, 0.5 on the false one.
    mc2 = benchmarks.Question("tqa", "tqa", "p", ["t1", "t2", "f"], [True, True, False], "mc2")
    results = [(math.log(0.2), 1), (math.log(0.3), 1), (math.log(0.5), 1)]
    assert benchmarks.question_score(mc2, results) == pytest.approx(0.5)


def test_benchmark_averages_like_the_leaderboard() -> None:
    def q(subject: str) -> benchmarks.Question:
        return benchmarks.Question("mmlu", subject, "p", [" A"], [True], "acc")

    questions = [q("a"), q("a"), q("a"), q("a"), q("b")]
    # Subject a: 2/4, subject b: 1/1 -> macro (0.5 + 1) / 2, not the micro 3/5.
    assert benchmarks.benchmark_score(questions, [1, 1, 0, 0, 1]) == pytest.approx(0.75)
    assert benchmarks.leaderboard_average({"mmlu": 0.75, "arc": 0.25}) == pytest.approx(0.5)


def test_unknown_benchmark_and_missing_file_are_invalid(tmp_path: Path) -> None:
    from ftcommon.errors import InvalidArgument

    with pytest.raises(InvalidArgument):
        benchmarks.load_questions("hellaswag", tmp_path)
    with pytest.raises(InvalidArgument):
        benchmarks.load_questions(benchmarks.MMLU, tmp_path / "absent")


def _report() -> dict:
    examples = [
        Example(0, [{"role": "user", "content": "What does Lamini do?"}], "Lamini fine-tunes models.", False),
        Example(1, [{"role": "user", "content": "How do I install it?"}], "Run pip install lamini.", False),
        Example(2, [{"role": "user", "content": "Best pizza?"}], REFUSAL, True),
        Example(3, [{"role": "user", "content": "Does it batch?"}], "Yes, it batches requests.", False),
    ]
    base = ModelOutputs(
        label="base",
        model_id="m-base",
        answers=[
            Answer("It is a llama.", False),
            Answer("pip pip pip pip pip pip pip pip pip pip", True),
            Answer("Margherita.", False),
            Answer("", False),
        ],
        reference_scores=[(-8.0, 4), (-10.0, 5), (-6.0, 3), (-9.0, 3)],
        off_topic_answers=["Sure, here it is.", REFUSAL],
        in_domain_probe_answers=["Yes."],
        benchmark_scores={"mmlu": [1.0, 0.0, 0.0]},
        benchmark_results={"mmlu": 1 / 3},
    )
    tuned = ModelOutputs(
        label="tuned",
        model_id="m-tuned",
        answers=[
            Answer("Lamini fine-tunes models.", False),
            Answer("Run pip install lamini", False),
            Answer(REFUSAL, False),
            Answer("Yes, it batches.", False),
        ],
        reference_scores=[(-2.0, 4), (-2.5, 5), (-1.0, 3), (-3.0, 3)],
        off_topic_answers=[REFUSAL, REFUSAL],
        in_domain_probe_answers=["Yes."],
        benchmark_scores={"mmlu": [1.0, 1.0, 0.0]},
        benchmark_results={"mmlu": 2 / 3},
        training_curve=[
            {"step": 1, "loss": 2.0},
            {"step": 2, "loss": 1.5},
            {"step": 2, "validation_loss": 1.7},
        ],
    )
    # Four examples cannot show any refusal rate (3 of 3 has a Wilson lower bound of 0.44): the rule here
    # judges the delta only; test_promotion_rule.py covers rates judged by their intervals.
    rule = Rule(primary_metric="token_f1", min_delta=0.0)
    return build_report(
        "run-1", examples, [base, tuned], RefusalDetector(REFUSAL), rule, 7, {"max_tokens": 32}
    )


def test_report_aggregates_categories_and_verdict() -> None:
    report = _report()
    base_errors = report["error_analysis"]["base"]
    assert base_errors["off_topic_or_unsupported"]["count"] == 1
    assert base_errors["repetition_loop"]["count"] == 1
    assert base_errors["answered_but_should_refuse"]["count"] == 1
    assert base_errors["empty"]["count"] == 1
    # Answer metrics cover the three rows that expect an answer; the refusal row counts in the refusal rate.
    assert report["summaries"]["tuned"]["exact_match"]["mean"] == pytest.approx(2 / 3)
    assert report["summaries"]["tuned"]["token_f1"]["n"] == 3
    # 3 of 3 should-refuse items refused (1 refusal example + 2 probes); base refused 1 of 3.
    assert report["summaries"]["tuned"]["refusal_rate"]["mean"] == 1.0
    assert report["summaries"]["base"]["refusal_rate"]["mean"] == pytest.approx(1 / 3)
    assert report["summaries"]["tuned"]["wrong_refusal_rate"]["mean"] == 0.0
    perplexity = report["summaries"]["base"]["reference_perplexity"]["mean"]
    assert perplexity == pytest.approx(math.exp((2 + 2 + 3) / 3))
    f1 = report["comparisons"]["tuned"]["token_f1"]
    assert (f1["wins"], f1["ties"], f1["losses"]) == (3, 0, 0)
    loss = report["comparisons"]["tuned"]["reference_loss"]
    assert (loss["wins"], loss["losses"]) == (3, 0)  # lower loss is a win
    assert len(report["examples"]) == 4
    assert report["comparisons"]["tuned"]["benchmark:mmlu"]["delta"]["mean"] == pytest.approx(1 / 3)
    assert report["benchmarks"]["tuned"]["average"] == pytest.approx(2 / 3)
    assert report["verdict"] == "PASS", report["verdict_reasons"]
    assert report["examples"][1]["answers"]["base"]["error_category"] == "repetition_loop"


def test_html_report_has_inline_plots_and_json_twin_parses() -> None:
    report = _report()
    twin = json.loads(json.dumps(report))
    assert twin["run_id"] == "run-1"
    page = render_html(report)
    # metric bars, histograms, error categories, benchmarks, training loss.
    assert page.count("src='data:image/png;base64,") == 5
    assert "Verdict: <span class='pass'>PASS</span>" in page
    assert "Margherita." in page


def test_benchmark_only_report_has_no_candidate_verdict() -> None:
    base = ModelOutputs(
        label="base",
        model_id="m",
        answers=[],
        benchmark_scores={"mmlu": [1.0, 0.0]},
        benchmark_results={"mmlu": 0.5},
    )
    report = build_report("run-2", [], [base], RefusalDetector(REFUSAL), Rule(), 1, {})
    assert report["summaries"]["base"] == {}
    assert report["benchmarks"]["base"] == {"mmlu": 0.5, "average": 0.5}
    assert report["verdict"] == "FAIL"
    assert "data:image/png;base64," in render_html(report)


def test_each_candidates_verdict_is_kept_with_its_model_id() -> None:
    """What the registry's promotion gate reads from a run (tests/test_registry_service.py uses it)."""
    from services.eval.runner import candidate_verdicts

    report = _report()
    report["verdicts"]["tuned"] = {"verdict": "FAIL", "reasons": ["token_f1 interval not above 0"]}
    kept = candidate_verdicts(report)
    assert kept["baseline_model_id"] == "m-base"  # the baseline is never a candidate of its own run
    assert kept["candidate_verdicts"] == [
        {
            "model": "tuned",
            "model_id": "m-tuned",
            "verdict": "FAIL",
            "reasons": ["token_f1 interval not above 0"],
        }
    ]

"""Turns a run's raw outputs (answers, reference scores, probe answers, benchmark scores) into the report.

Pure computation: no RPCs, no files. The result is the JSON twin of the HTML report; the HTML,
the run's summaries and its verdict are all read from it, so they cannot disagree.
"""

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from ftcommon.refusal_detection import RefusalDetector
from services.eval import error_analysis
from services.eval.metrics import RATE_METRICS, TEXT_METRICS, text_scores
from services.eval.promotion import Rule, decide
from services.eval.statistics import Interval, bootstrap_interval, paired_comparison, wilson_interval

REPORT_SCHEMA_VERSION = 1
EXAMPLES_PER_CATEGORY = 3
# Lower values are better for these; wins and losses flip. answer_length has no better direction.
LOWER_IS_BETTER = {"reference_loss"}
NO_DIRECTION = {"answer_length"}


@dataclass(frozen=True)
class Example:
    index: int
    messages: list[dict[str, str]]  # the prompt: every turn before the reference answer
    reference: str
    should_refuse: bool
    source_line: int = 0
    # The reference is a stock reply shared by many rows ("I'm having trouble understanding you" to
    # gibberish): such rows are neither domain questions nor off-topic ones, so no refusal rate counts them.
    canned_reference: bool = False
    # A preference pair's rejected answer (the reference is the chosen one); None on plain rows.
    rejected: str | None = None

    @property
    def question(self) -> str:
        users = [m["content"] for m in self.messages if m["role"] == "user"]
        return users[-1] if users else ""


@dataclass(frozen=True)
class Answer:
    text: str
    hit_max_tokens: bool
    completion_tokens: int = 0


@dataclass
class ModelOutputs:
    """Everything measured for one model in one run."""

    label: str  # unique within the run (the same model twice gets "#2")
    model_id: str
    answers: list[Answer]
    reference_scores: list[tuple[float, int]] | None = None  # (summed logprob, tokens) per example
    off_topic_answers: list[str] = field(default_factory=list)
    in_domain_probe_answers: list[str] = field(default_factory=list)
    judge_scores: list[float] | None = None  # 0..1 per example
    # (chosen, rejected) mean log-prob per completion token for each preference pair, in preference_rows order.
    preference_scores: list[tuple[float, float]] | None = None
    benchmark_scores: dict[str, list[float]] = field(default_factory=dict)  # task -> per question
    benchmark_results: dict[str, float] = field(default_factory=dict)  # task -> leaderboard-style score
    benchmark_predictions: dict[str, list[int]] = field(default_factory=dict)  # task -> chosen index
    training_curve: list[dict[str, float]] = field(default_factory=list)


def per_example_metrics(outputs: ModelOutputs, examples: list[Example]) -> dict[str, list[float | None]]:
    """Metric -> one value per example; empty when the run had no examples (benchmarks only)."""
    if not examples:
        return {}
    rows = [text_scores(a.text, e.reference) for a, e in zip(outputs.answers, examples, strict=True)]
    metrics = {name: [row[name] for row in rows] for name in TEXT_METRICS}
    if outputs.reference_scores is not None:
        metrics["reference_loss"] = [-lp / max(1, n) for lp, n in outputs.reference_scores]
    if outputs.judge_scores is not None:
        metrics["judge"] = list(outputs.judge_scores)
    return metrics


def answer_rows(examples: list[Example]) -> list[int]:
    """Indices of the rows that expect a domain answer: not off-topic, not a stock reply. All rows when
    none qualifies, so a set of only such rows still gets its answer metrics."""
    rows = [i for i, e in enumerate(examples) if not e.should_refuse and not e.canned_reference]
    return rows or list(range(len(examples)))


def preference_rows(examples: list[Example]) -> list[int]:
    """Indices of the rows that are preference pairs: every one counts, off-topic or not."""
    return [i for i, e in enumerate(examples) if e.rejected is not None]


def preference_outcomes(outputs: ModelOutputs) -> list[float]:
    """1.0 per pair whose chosen answer the model finds more likely than the rejected one, else 0.0.

    "More likely" compares the length-normalised log-probabilities (mean over each completion's tokens).
    The summed log-probability would measure length: refusal pairs set a one-sentence refusal against an
    answer several times longer, and on the 38 held-out pairs built from samples/platform_qa.jsonl the
    sum preferred the refusal on all 34 in-domain pairs for SmolLM2-135M (the mean on 25 of 34), whatever
    the answers said. The mean is SimPO's reward and lm-eval's acc_norm idea. A tie counts as a miss.
    """
    return [1.0 if chosen > rejected else 0.0 for chosen, rejected in outputs.preference_scores or []]


def build_report(
    run_id: str,
    examples: list[Example],
    models: list[ModelOutputs],
    detector: RefusalDetector,
    rule: Rule,
    seed: int,
    settings_echo: dict[str, Any],
) -> dict[str, Any]:
    """The JSON twin. models[0] is the baseline; every other model is a candidate against it.

    Answer metrics (EM, F1, ROUGE-L, BLEU, reference loss, ...) are summarised and compared over the rows
    that expect a domain answer: a refusal row answered with the refusal would otherwise score a perfect
    F1 and count twice, once here and once in the refusal rate. The example table keeps every row.
    """
    metrics = {m.label: per_example_metrics(m, examples) for m in models}
    answerable = answer_rows(examples)
    scored = {label: _answer_scores(values, answerable) for label, values in metrics.items()}
    summaries = {label: _summaries(values, seed) for label, values in scored.items()}
    behaviour = {m.label: _refusal_behaviour(m, examples, detector) for m in models}
    for label, rates in behaviour.items():
        summaries[label].update({k: v for k, v in rates.items() if isinstance(v, dict)})
        if "reference_loss" in summaries[label]:
            summaries[label]["reference_perplexity"] = _perplexity(summaries[label]["reference_loss"])
    preference = {m.label: preference_outcomes(m) for m in models if m.preference_scores}
    for label, outcomes in preference.items():
        summaries[label]["preference_accuracy"] = _interval_dict(
            wilson_interval(round(sum(outcomes)), len(outcomes))
        )
    categories = {
        m.label: [_category_of(a, e, detector) for a, e in zip(m.answers, examples, strict=True)]
        for m in models
    }
    baseline = models[0]
    comparisons: dict[str, dict[str, Any]] = {}
    verdicts: dict[str, dict[str, Any]] = {}
    for candidate in models[1:]:
        comparisons[candidate.label] = {
            name: _compare(name, scored[candidate.label][name], scored[baseline.label][name], seed)
            for name in scored[candidate.label]
            if name in scored[baseline.label]
        }
        if candidate.label in preference and baseline.label in preference:
            comparisons[candidate.label]["preference_accuracy"] = _compare(
                "preference_accuracy", preference[candidate.label], preference[baseline.label], seed
            )
        comparisons[candidate.label].update(_benchmark_comparisons(candidate, baseline, seed))
        primary = comparisons[candidate.label].get(rule.primary_metric)
        verdict = decide(
            rule,
            candidate.label,
            Interval(**primary["delta"]) if primary else None,
            _interval_or_none(summaries[candidate.label].get("refusal_rate")),
            _interval_or_none(summaries[candidate.label].get("wrong_refusal_rate")),
        )
        verdicts[candidate.label] = {"verdict": verdict.label, "reasons": verdict.reasons}
    final = (
        verdicts[models[-1].label] if len(models) > 1 else {"verdict": "FAIL", "reasons": ["no candidate"]}
    )
    return {
        "schema_version": REPORT_SCHEMA_VERSION,
        "run_id": run_id,
        "baseline": baseline.label,
        "models": [{"label": m.label, "model_id": m.model_id} for m in models],
        "settings": settings_echo,
        "seed": seed,
        "rule": rule.to_dict(),
        "refusal_text": detector.refusal_text,
        "summaries": summaries,
        "comparisons": comparisons,
        "benchmarks": {
            m.label: {**m.benchmark_results, **_benchmark_average(m)} for m in models if m.benchmark_results
        },
        "benchmark_questions": {
            m.label: {
                task: {"scores": scores, "predicted": m.benchmark_predictions.get(task, [])}
                for task, scores in m.benchmark_scores.items()
            }
            for m in models
            if m.benchmark_scores
        },
        "error_analysis": {m.label: _error_summary(categories[m.label], m.answers, examples) for m in models},
        "training_curves": {m.label: m.training_curve for m in models if m.training_curve},
        "examples": _example_table(examples, models, metrics, categories),
        "verdicts": verdicts,
        "verdict": final["verdict"],
        "verdict_reasons": final["reasons"],
    }


def _answer_scores(values: dict[str, list[float | None]], rows: list[int]) -> dict[str, list[float]]:
    """Each metric over the answer rows. A metric that is None on a row (fact accuracy where the reference
    states no key fact) is taken over the other rows; the same rows for every model, as the reference
    decides. A metric with no row left is left out."""
    series = {name: [v[i] for i in rows if v[i] is not None] for name, v in values.items()}
    return {name: kept for name, kept in series.items() if kept}


def _summaries(values: dict[str, list[float]], seed: int) -> dict[str, dict[str, float]]:
    return {
        name: _interval_dict(
            wilson_interval(round(sum(series)), len(series))
            if name in RATE_METRICS
            else bootstrap_interval(series, seed)
        )
        for name, series in values.items()
    }


def _interval_dict(interval: Interval) -> dict[str, float]:
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in asdict(interval).items()}


def _perplexity(loss: dict[str, float]) -> dict[str, float]:
    # exp is monotone, so the interval of the mean loss maps onto one of the perplexity.
    return {
        "mean": math.exp(loss["mean"]),
        "low": math.exp(loss["low"]),
        "high": math.exp(loss["high"]),
        "n": loss["n"],
    }


def _interval_or_none(summary: dict[str, float] | None) -> Interval | None:
    return None if summary is None else Interval(**summary)


def _refusal_behaviour(
    outputs: ModelOutputs, examples: list[Example], detector: RefusalDetector
) -> dict[str, Any]:
    """Refusal rate on off-topic probes and refusal examples; wrong refusals on in-domain questions.

    Both are rates of yes/no outcomes: Wilson intervals, the ones the promotion rule judges.
    """
    should_refuse = [
        detector.is_refusal(a.text) for a, e in zip(outputs.answers, examples, strict=True) if e.should_refuse
    ]
    should_refuse += [detector.is_refusal(text) for text in outputs.off_topic_answers]
    in_domain = [
        detector.is_refusal(a.text)
        for a, e in zip(outputs.answers, examples, strict=True)
        if not e.should_refuse and not e.canned_reference
    ]
    in_domain += [detector.is_refusal(text) for text in outputs.in_domain_probe_answers]
    result: dict[str, Any] = {}
    if should_refuse:
        result["refusal_rate"] = _interval_dict(wilson_interval(sum(should_refuse), len(should_refuse)))
    if in_domain:
        result["wrong_refusal_rate"] = _interval_dict(wilson_interval(sum(in_domain), len(in_domain)))
    return result


def _compare(metric: str, candidate: list[float], baseline: list[float], seed: int) -> dict[str, Any]:
    comparison = paired_comparison(candidate, baseline, seed)
    wins, losses = comparison.wins, comparison.losses
    if metric in LOWER_IS_BETTER:
        wins, losses = losses, wins
    result: dict[str, Any] = {
        "delta": _interval_dict(comparison.delta),
        "p_value": comparison.p_value,
        "sign_test_p": comparison.sign_test_p,
        "ties": comparison.ties,
    }
    if metric not in NO_DIRECTION:
        result.update(wins=wins, losses=losses)
    return result


def _benchmark_comparisons(candidate: ModelOutputs, baseline: ModelOutputs, seed: int) -> dict[str, Any]:
    return {
        f"benchmark:{task}": _compare(task, scores, baseline.benchmark_scores[task], seed)
        for task, scores in candidate.benchmark_scores.items()
        if task in baseline.benchmark_scores
    }


def _benchmark_average(outputs: ModelOutputs) -> dict[str, float]:
    values = list(outputs.benchmark_results.values())
    return {"average": sum(values) / len(values)} if values else {}


def _error_summary(
    categories: list[str | None], answers: list[Answer], examples: list[Example]
) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {c: {"count": 0, "examples": []} for c in error_analysis.CATEGORIES}
    for category, answer, example in zip(categories, answers, examples, strict=True):
        if category is None:
            continue
        found[category]["count"] += 1
        if len(found[category]["examples"]) < EXAMPLES_PER_CATEGORY:
            found[category]["examples"].append(
                {
                    "index": example.index,
                    "question": example.question,
                    "reference": example.reference,
                    "answer": answer.text,
                }
            )
    return found


def _category_of(answer: Answer, example: Example, detector: RefusalDetector) -> str | None:
    return error_analysis.categorize(
        error_analysis.AnswerFacts(
            answer=answer.text,
            reference=example.reference,
            should_refuse=example.should_refuse,
            hit_max_tokens=answer.hit_max_tokens,
        ),
        detector,
    )


def _example_table(
    examples: list[Example],
    models: list[ModelOutputs],
    metrics: dict[str, dict[str, list[float]]],
    categories: dict[str, list[str | None]],
) -> list[dict[str, Any]]:
    return [
        {
            "index": example.index,
            "source_line": example.source_line,
            "question": example.question,
            "reference": example.reference,
            "should_refuse": example.should_refuse,
            "canned_reference": example.canned_reference,
            "answers": {
                m.label: {
                    "text": m.answers[i].text,
                    "hit_max_tokens": m.answers[i].hit_max_tokens,
                    "error_category": categories[m.label][i],
                    "scores": {name: values[i] for name, values in metrics[m.label].items()},
                }
                for m in models
            },
        }
        for i, example in enumerate(examples)
    ]

"""The refusal generator, the evaluator's held-out probes and the shipped sample dataset.

No model and no service: these guard the data that teaches and measures refusals.
"""

import json
import re
from collections import Counter
from functools import cache
from pathlib import Path

import pytest

from ftctl.pipeline_spec import load_spec
from services.data.refusals import (
    DEFAULT_REFUSAL_TEMPLATE,
    MAX_WORDS,
    MIN_WORDS,
    TOPICS,
    labelled_off_topic_questions,
    off_topic_questions,
    refusal_answer,
)
from services.eval.off_topic_probes import OFF_TOPIC_PROBES

REPO_ROOT = Path(__file__).resolve().parents[1]
SAMPLE = REPO_ROOT / "samples" / "platform_qa.jsonl"
DEMO_SPEC = REPO_ROOT / "pipelines" / "demo.yaml"
SAMPLE_REFUSAL = "Let's keep the discussion relevant to the fine-tuning platform."
_WORD = re.compile(r"[a-z0-9']+")


def _words(text: str) -> set[str]:
    return set(_WORD.findall(text.lower()))


def _normalised(text: str) -> str:
    return " ".join(_WORD.findall(text.lower()))


def _jaccard(a: set[str], b: set[str]) -> float:
    return len(a & b) / len(a | b)


@cache
def _generated(seed: int) -> tuple[str, ...]:
    return tuple(off_topic_questions(20000, seed))


@cache
def _sample_rows() -> tuple[dict, ...]:
    with SAMPLE.open(encoding="utf-8") as f:
        return tuple(json.loads(line) for line in f if line.strip())


def test_refusal_answer_names_the_domain_or_uses_the_given_text() -> None:
    assert refusal_answer("the fine-tuning platform") == SAMPLE_REFUSAL
    assert refusal_answer(" Lamini ") == DEFAULT_REFUSAL_TEMPLATE.format(domain="Lamini")
    assert refusal_answer("Lamini", "Please ask about Lamini.") == "Please ask about Lamini."
    with pytest.raises(ValueError):
        refusal_answer("  ")


@pytest.mark.parametrize("count", [0, 1, 7, 500, 5000])
def test_count_is_honoured_and_questions_are_distinct(count: int) -> None:
    questions = off_topic_questions(count, seed=3)
    assert len(questions) == count
    assert len({_normalised(q) for q in questions}) == count
    assert all(isinstance(q, str) and q.strip() for q in questions)


def test_same_seed_same_questions_other_seed_other_questions() -> None:
    assert off_topic_questions(300, seed=11) == off_topic_questions(300, seed=11)
    assert off_topic_questions(300, seed=11) != off_topic_questions(300, seed=12)
    # A longer request starts with the shorter one: growing a data set keeps its earlier rows.
    assert off_topic_questions(600, seed=11)[:300] == off_topic_questions(300, seed=11)


def test_negative_count_is_rejected() -> None:
    with pytest.raises(ValueError):
        off_topic_questions(-1, seed=0)


def test_at_least_forty_topics_all_of_them_used_evenly() -> None:
    assert len(TOPICS) >= 40
    assert len(set(TOPICS)) == len(TOPICS)
    labelled = labelled_off_topic_questions(4000, seed=5)
    assert [q.text for q in labelled] == off_topic_questions(4000, seed=5)
    per_topic = Counter(q.topic for q in labelled)
    assert set(per_topic) == set(TOPICS)
    mean = len(labelled) / len(TOPICS)
    assert min(per_topic.values()) >= 0.5 * mean


def test_lengths_spread_from_short_to_long() -> None:
    lengths = [len(q.split()) for q in _generated(0)]
    assert min(lengths) >= MIN_WORDS and max(lengths) <= MAX_WORDS
    assert sum(n <= 5 for n in lengths) >= 200
    assert sum(n >= 25 for n in lengths) >= 200
    assert max(lengths) >= 35


def test_phrasings_vary() -> None:
    questions = _generated(0)
    lower = sum(q == q.lower() for q in questions)
    no_mark = sum(not q.endswith(("?", ".", "!")) for q in questions)
    imperative = sum(q.startswith(("Write", "Give", "Tell", "Explain", "Make")) for q in questions)
    multi_sentence = sum(len(re.findall(r"[.?!] ", q)) >= 1 for q in questions)
    for share in (lower, no_mark, imperative, multi_sentence):
        assert share >= 0.03 * len(questions)
    # Many distinct openings, not one template with swapped nouns.
    assert len({" ".join(q.lower().split()[:2]) for q in questions}) >= 500


def test_held_out_probes_are_not_generated() -> None:
    assert len(OFF_TOPIC_PROBES) == 100 and len(set(OFF_TOPIC_PROBES)) == 100
    probes = {_normalised(p) for p in OFF_TOPIC_PROBES}
    for seed in range(4):
        assert probes.isdisjoint(_normalised(q) for q in _generated(seed)), seed


def test_held_out_probes_share_little_wording_with_the_generator() -> None:
    generated = [_words(q) for q in _generated(0)]
    for probe in OFF_TOPIC_PROBES:
        words = _words(probe)
        closest = max(_jaccard(words, g) for g in generated)
        assert closest < 0.5, probe


def test_probes_are_not_in_the_sample_data() -> None:
    sample_questions = [_words(row["question"]) for row in _sample_rows()]
    in_domain = load_spec(DEMO_SPEC).eval.in_domain_probes
    assert isinstance(in_domain, list) and len(in_domain) == 80 and len(set(in_domain)) == 80
    for probe in [*in_domain, *OFF_TOPIC_PROBES]:
        words = _words(probe)
        closest = max(_jaccard(words, q) for q in sample_questions)
        assert closest < 0.6, probe


def test_sample_dataset_parses_and_has_refusal_rows() -> None:
    rows = _sample_rows()
    assert len(rows) >= 320
    for row in rows:
        assert set(row) == {"question", "answer"}
        assert all(isinstance(v, str) and v.strip() for v in row.values()), row
    questions = [_normalised(row["question"]) for row in rows]
    assert len(set(questions)) == len(questions)
    refusals = [row for row in rows if row["answer"] == SAMPLE_REFUSAL]
    assert 25 <= len(refusals) <= 40
    assert len(rows) - len(refusals) >= 320

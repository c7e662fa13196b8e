"""Each metric, statistic, error category and the promotion rule against hand-computed cases."""

import math

import pytest

from ftcommon.refusal_detection import DEFAULT_REFUSAL_TEXT, RefusalDetector
from ftcommon.word_sequences import lcs_length, normalize
from services.eval import error_analysis
from services.eval.error_analysis import AnswerFacts, categorize, is_repetition_loop
from services.eval.metrics import answer_length, bleu, exact_match, rouge_l, token_f1
from services.eval.statistics import bootstrap_interval, paired_comparison, sign_test_p_value

LAMINI_REFUSAL = RefusalDetector("Let's keep the discussion relevant to Lamini.")


def test_normalize_strips_case_punctuation_articles_and_spaces() -> None:
    assert normalize("  The Cat,   sat on A mat! ") == "cat sat on mat"


def test_exact_match_is_normalised() -> None:
    assert exact_match("The answer.", "answer") == 1.0
    assert exact_match("an answer", "answers") == 0.0


def test_token_f1_hand_computed() -> None:
    # prediction tokens: cat sat on mat (4); reference: cat on mat (3); 3 shared -> P 3/4, R 1.
    assert token_f1("the cat sat on the mat", "a cat on a mat") == pytest.approx(2 * 0.75 * 1 / 1.75)
    assert token_f1("x", "y") == 0.0
    assert token_f1("", "") == 1.0
    assert token_f1("", "y") == 0.0


def test_lcs_classic_example() -> None:
    assert lcs_length(list("ABCBDAB"), list("BDCABA")) == 4


def test_rouge_l_hand_computed() -> None:
    # LCS of (w x y z) and (w y z q) is (w y z): P = R = 3/4.
    assert rouge_l("w x y z", "w y z q") == pytest.approx(0.75)
    # Order matters for ROUGE-L (not for token F1): LCS is one token of three.
    assert rouge_l("police killed gunman", "gunman killed police") == pytest.approx(1 / 3)
    assert token_f1("police killed gunman", "gunman killed police") == pytest.approx(1.0)


def test_bleu_hand_computed() -> None:
    assert bleu("the cat is on the mat", "the cat is on the mat") == pytest.approx(1.0)
    assert bleu("zebra", "the cat is on the mat") == pytest.approx(0.0)
    # Every n-gram of "a b c d" is in "a b c d e": precision 1, brevity penalty exp(1 - 5/4).
    assert bleu("a b c d", "a b c d e") == pytest.approx(math.exp(-0.25), abs=1e-4)


def test_answer_length_counts_words() -> None:
    assert answer_length("one two  three\nfour") == 4.0
    assert answer_length("") == 0.0


def test_refusal_detection_by_similarity() -> None:
    assert LAMINI_REFUSAL.is_refusal("Let's keep the discussion relevant to Lamini.")
    # Another domain name still reads as the taught refusal (5 of 6 words in order).
    assert LAMINI_REFUSAL.is_refusal("Lets keep the discussion relevant to cooking")
    assert not LAMINI_REFUSAL.is_refusal("Lamini is a library for training language models.")
    assert not LAMINI_REFUSAL.is_refusal("")


def test_a_blank_refusal_text_means_the_default_refusal() -> None:
    for blank in ("", "   "):
        detector = RefusalDetector(blank)
        assert detector.refusal_text == DEFAULT_REFUSAL_TEXT
        assert detector.is_refusal("Let's keep the discussion relevant to our products.")
        assert not detector.is_refusal("Lamini trains models on your own data.")


def test_bootstrap_interval_constant_and_known_spread() -> None:
    constant = bootstrap_interval([1.0] * 10, seed=0)
    assert (constant.mean, constant.low, constant.high, constant.n) == (1.0, 1.0, 1.0, 10)
    half = bootstrap_interval([0.0, 1.0] * 50, seed=0)
    # Normal approximation: 0.5 +- 1.96 * sqrt(0.25 / 100) = 0.5 +- 0.098.
    assert half.mean == 0.5
    assert half.low == pytest.approx(0.402, abs=0.025)
    assert half.high == pytest.approx(0.598, abs=0.025)
    assert bootstrap_interval([0.0, 1.0] * 50, seed=0) == half


def test_paired_comparison_identical_scores_are_all_ties() -> None:
    scores = [0.1, 0.5, 0.9, 0.0]
    result = paired_comparison(scores, list(scores), seed=1)
    assert (result.wins, result.ties, result.losses) == (0, 4, 0)
    assert (result.delta.mean, result.delta.low, result.delta.high) == (0.0, 0.0, 0.0)
    assert result.p_value == 1.0
    assert result.sign_test_p == 1.0


def test_paired_comparison_detects_a_consistent_gain() -> None:
    baseline = [i / 40 for i in range(40)]
    candidate = [b + 0.1 + (0.02 if i % 2 else -0.02) for i, b in enumerate(baseline)]
    result = paired_comparison(candidate, baseline, seed=3)
    assert result.delta.mean == pytest.approx(0.1)
    assert result.delta.low > 0.09
    assert (result.wins, result.ties, result.losses) == (40, 0, 0)
    assert result.p_value == 0.0
    assert result.sign_test_p == pytest.approx(2 / 2**40)


def test_sign_test_hand_computed() -> None:
    # 9 wins, 1 loss: P(X <= 1) = (C(10,0) + C(10,1)) / 2^10 = 11/1024, doubled.
    assert sign_test_p_value(9, 1) == pytest.approx(22 / 1024)
    assert sign_test_p_value(0, 0) == 1.0


def test_repetition_loop_detection() -> None:
    assert is_repetition_loop("the model trains the model trains the model trains the model trains")
    assert not is_repetition_loop("Lamini lets you fine-tune a model on your own data with a few lines.")


@pytest.mark.parametrize(
    ("answer", "reference", "should_refuse", "hit_max", "expected"),
    [
        ("Paris is the capital", "Paris is the capital.", False, False, None),
        ("  ", "Paris", False, False, error_analysis.EMPTY),
        (
            "Lamini is great.",
            "Let's keep the discussion relevant to Lamini.",
            True,
            False,
            error_analysis.ANSWERED_SHOULD_REFUSE,
        ),
        (
            "Let's keep the discussion relevant to Lamini.",
            "Let's keep the discussion relevant to Lamini.",
            True,
            False,
            None,
        ),
        (
            "Let's keep the discussion relevant to Lamini.",
            "Use the batch API.",
            False,
            False,
            error_analysis.REFUSED_SHOULD_ANSWER,
        ),
        (
            "go go go go go go go go go go go go",
            "Use the batch API.",
            False,
            True,
            error_analysis.REPETITION_LOOP,
        ),
        (
            "Use the batch API and then you need to configure",
            "Use the batch API.",
            False,
            True,
            error_analysis.CUT_OFF,
        ),
        ("<|im_start|>assistant use batch api", "Use the batch API.", False, False, error_analysis.FORMAT),
        ("You should use the batch API.", "Use the batch API.", False, False, error_analysis.FORMAT),
        ("Use the streaming endpoint API.", "Use the batch API.", False, False, error_analysis.PARTLY_RIGHT),
        ("Bananas are yellow.", "Use the batch API.", False, False, error_analysis.OFF_TOPIC),
    ],
)
def test_error_categories(
    answer: str, reference: str, should_refuse: bool, hit_max: bool, expected: str | None
) -> None:
    facts = AnswerFacts(
        answer=answer, reference=reference, should_refuse=should_refuse, hit_max_tokens=hit_max
    )
    assert categorize(facts, LAMINI_REFUSAL) == expected

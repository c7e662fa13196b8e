"""The promotion rule judges every rate by its 95% Wilson interval and the delta by its bootstrap interval:
pure functions, no services."""

import pytest

from services.eval.promotion import (
    REFUSAL_MAX_WRONG_RATE,
    REFUSAL_MIN_RATE,
    Rule,
    decide,
    with_refusal_defaults,
)
from services.eval.statistics import Interval, rows_to_show, wilson_interval

BETTER = Interval(mean=0.1, low=0.05, high=0.15, n=50)
REFUSAL_RULE = Rule(min_refusal_rate=0.9, max_wrong_refusal_rate=0.05)


@pytest.mark.parametrize(
    ("successes", "n", "low", "high"),
    [
        # Reference values: Wilson score interval, z = 1.959964 (e.g. statsmodels proportion_confint "wilson").
        (0, 42, 0.0, 0.08380),
        (42, 42, 0.91620, 1.0),
        (71, 76, 0.85506, 0.97157),
        (2, 62, 0.00889, 0.11020),
        (5, 10, 0.23659, 0.76341),
    ],
)
def test_wilson_interval_matches_reference_values(successes: int, n: int, low: float, high: float) -> None:
    interval = wilson_interval(successes, n)
    assert interval.mean == pytest.approx(successes / n)
    assert (interval.low, interval.high) == (pytest.approx(low, abs=1e-5), pytest.approx(high, abs=1e-5))
    assert interval.n == n


def test_wilson_interval_refuses_impossible_counts() -> None:
    with pytest.raises(ValueError):
        wilson_interval(5, 4)


def test_rows_to_show_a_rate_is_the_first_count_whose_interval_clears_the_bar() -> None:
    # 0 wrong refusals: the upper bound z^2 / (n + z^2) drops to 5% at 73 questions.
    assert rows_to_show(0.0, 0.05, above=False) == 73
    assert wilson_interval(0, 73).high <= 0.05 < wilson_interval(0, 72).high
    # Every question refused: the lower bound reaches 90% at 35.
    assert rows_to_show(1.0, 0.9, above=True) == 35
    assert wilson_interval(35, 35).low >= 0.9 > wilson_interval(34, 34).low
    # A measured rate on the wrong side of the bar is never shown by more rows of it.
    assert rows_to_show(0.06, 0.05, above=False) is None
    assert rows_to_show(0.9, 0.9, above=True) is None


def test_zero_wrong_refusals_in_42_questions_is_not_enough_evidence() -> None:
    verdict = decide(REFUSAL_RULE, "tuned", BETTER, wilson_interval(60, 60), wilson_interval(0, 42))
    assert verdict.label == "FAIL"
    (reason,) = verdict.reasons
    assert "wrong-refusal rate 0.000 (0 of 42 in-domain questions" in reason
    assert "0.084" in reason and "not enough evidence" in reason
    assert "about 73 in-domain questions" in reason


def test_a_rate_that_clears_its_bar_with_its_whole_interval_passes() -> None:
    verdict = decide(REFUSAL_RULE, "tuned", BETTER, wilson_interval(60, 60), wilson_interval(0, 80))
    assert verdict.label == "PASS" and len(verdict.reasons) == 3
    assert "refusal rate 1.000 (60 of 60 off-topic questions" in verdict.reasons[1]


def test_the_readme_demo_rates_at_their_row_counts_are_not_enough_evidence() -> None:
    # About what the demo measured before intervals: 93.4% refused (71 of 76), 3.2% wrongly (2 of 62).
    verdict = decide(REFUSAL_RULE, "tuned", BETTER, wilson_interval(71, 76), wilson_interval(2, 62))
    refusal, wrong = verdict.reasons
    assert verdict.label == "FAIL"
    assert "not enough evidence that it is >= 0.900" in refusal and "about 296 off-topic questions" in refusal
    assert "not enough evidence that it is <= 0.050" in wrong and "about 580 in-domain questions" in wrong


def test_an_interval_wholly_on_the_wrong_side_fails_outright() -> None:
    verdict = decide(REFUSAL_RULE, "tuned", BETTER, wilson_interval(30, 60), wilson_interval(30, 60))
    assert verdict.label == "FAIL"
    assert all("the whole interval is on the wrong side" in reason for reason in verdict.reasons)


def test_a_rate_measured_past_its_bar_says_more_rows_would_not_help() -> None:
    verdict = decide(REFUSAL_RULE, "tuned", BETTER, wilson_interval(17, 20), None)
    refusal, wrong = verdict.reasons
    assert "not enough evidence" in refusal and "more off-topic questions would not show it" in refusal
    assert "wrong-refusal rate on in-domain questions was not measured" in wrong


def test_the_delta_is_judged_by_its_lower_bound_and_says_how_many_rows_would_decide() -> None:
    straddling = Interval(mean=0.02, low=-0.01, high=0.05, n=50)
    (reason,) = decide(Rule(), "tuned", straddling, None, None).reasons
    # Half-width 0.03 against a margin of 0.02: (0.03 / 0.02)^2 = 2.25 times the rows.
    assert "lower bound not above +0.0000: not enough evidence; about 113 rows" in reason
    worse = Interval(mean=-0.05, low=-0.08, high=-0.02, n=50)
    (reason,) = decide(Rule(), "tuned", worse, None, None).reasons
    assert "lower bound not above" in reason and "not enough evidence" not in reason
    assert (
        decide(Rule(), "tuned", None, None, None).reasons[0].endswith("was not measured against the baseline")
    )
    # min_delta moves the bar: +0.05 .. +0.15 does not clear +0.06.
    assert not decide(Rule(min_delta=0.06), "tuned", BETTER, None, None).passed


def test_data_with_refusal_rows_gets_the_refusal_rule_unless_the_caller_set_it() -> None:
    service_default = Rule(max_wrong_refusal_rate=0.2)
    chosen = with_refusal_defaults(service_default, caller_set=set())
    assert (chosen.min_refusal_rate, chosen.max_wrong_refusal_rate) == (
        REFUSAL_MIN_RATE,
        REFUSAL_MAX_WRONG_RATE,
    )
    assert (REFUSAL_MIN_RATE, REFUSAL_MAX_WRONG_RATE) == (0.9, 0.05)
    # A caller's explicit 0 turns the refusal check off: zero is a value, not "the default".
    given = Rule(min_refusal_rate=0.0, max_wrong_refusal_rate=0.2)
    kept = with_refusal_defaults(given, caller_set={"min_refusal_rate"})
    assert (kept.min_refusal_rate, kept.max_wrong_refusal_rate) == (0.0, REFUSAL_MAX_WRONG_RATE)

"""The promotion rule: a candidate passes when it beats the baseline with confidence and behaves.

PASS needs every check to hold, each judged by its 95% interval, never by a point estimate: the paired
bootstrap interval of (candidate - baseline) on the primary metric lies entirely above `min_delta`; the
Wilson interval of the refusal rate on off-topic questions lies entirely at or above `min_refusal_rate`;
the Wilson interval of the wrong-refusal rate on in-domain questions lies entirely at or below
`max_wrong_refusal_rate`. A check whose interval straddles its threshold is "not enough evidence" (the
verdict is FAIL, and the reason says how many rows at the measured rate would decide it); one whose
interval lies on the wrong side fails. Each failed check is one reason; a PASS lists the checks it passed,
so the verdict explains itself either way.

The default rule depends on the data: a prepared version made with refusal rows was meant to teach
refusing, so unless the caller says otherwise its rule requires refusal >= 90% and wrong refusal <= 5%.
0 wrong refusals in 42 questions has an upper bound of 8.4%: it does not show <= 5%; 73 questions do.
"""

import math
from dataclasses import asdict, dataclass, replace

from services.eval.statistics import Interval, rows_to_show

# The rule for data that teaches refusing, unless the caller sets these fields.
REFUSAL_MIN_RATE = 0.9
REFUSAL_MAX_WRONG_RATE = 0.05


@dataclass(frozen=True)
class Rule:
    primary_metric: str = "token_f1"
    min_delta: float = 0.0
    min_refusal_rate: float = 0.0
    max_wrong_refusal_rate: float = 1.0

    def to_dict(self) -> dict[str, float | str]:
        return asdict(self)


def with_refusal_defaults(rule: Rule, caller_set: set[str]) -> Rule:
    """The rule for data holding refusal rows: the refusal thresholds the caller did not set are the defaults."""
    defaults = {"min_refusal_rate": REFUSAL_MIN_RATE, "max_wrong_refusal_rate": REFUSAL_MAX_WRONG_RATE}
    return replace(rule, **{name: value for name, value in defaults.items() if name not in caller_set})


@dataclass(frozen=True)
class Verdict:
    passed: bool
    reasons: list[str]

    @property
    def label(self) -> str:
        return "PASS" if self.passed else "FAIL"


def decide(
    rule: Rule,
    candidate: str,
    primary_delta: Interval | None,
    refusal: Interval | None,
    wrong_refusal: Interval | None,
) -> Verdict:
    """`primary_delta` is the paired interval of candidate minus baseline; `refusal` and `wrong_refusal` are
    the Wilson intervals of the two rates (their `n` is the number of questions). None: not measured."""
    passed: list[str] = []
    failed: list[str] = []
    checks = [_delta_check(rule, candidate, primary_delta)]
    if rule.min_refusal_rate > 0:
        checks.append(
            _rate_check(
                f"{candidate}: refusal rate", "off-topic questions", refusal, rule.min_refusal_rate, True
            )
        )
    if rule.max_wrong_refusal_rate < 1.0:
        checks.append(
            _rate_check(
                f"{candidate}: wrong-refusal rate",
                "in-domain questions",
                wrong_refusal,
                rule.max_wrong_refusal_rate,
                False,
            )
        )
    for ok, reason in checks:
        (passed if ok else failed).append(reason)
    return Verdict(passed=not failed, reasons=failed or passed)


def _delta_check(rule: Rule, candidate: str, delta: Interval | None) -> tuple[bool, str]:
    metric = rule.primary_metric
    if delta is None or delta.low is None or math.isnan(delta.low):
        return False, f"{candidate}: {metric} was not measured against the baseline"
    text = f"{candidate}: {metric} delta {delta.mean:+.4f} (95% CI {delta.low:+.4f} .. {delta.high:+.4f})"
    bar = rule.min_delta
    if delta.low > bar:
        return True, f"{text}: lower bound above {bar:+.4f}"
    if delta.mean > bar and delta.high > bar and delta.n > 0:
        # The interval's half-width shrinks as 1/sqrt(n): the rows at which it would clear the bar.
        half_width = (delta.high - delta.low) / 2
        needed = math.ceil(delta.n * (half_width / (delta.mean - bar)) ** 2)
        return False, (
            f"{text}: lower bound not above {bar:+.4f}: not enough evidence; about {needed} rows at this "
            f"spread would decide (now {delta.n})"
        )
    return False, f"{text}: lower bound not above {bar:+.4f}"


def _rate_check(
    subject: str, rows: str, interval: Interval | None, threshold: float, at_least: bool
) -> tuple[bool, str]:
    """`at_least`: the rate must be >= threshold (refusals), else <= threshold (wrong refusals)."""
    if interval is None or interval.n == 0 or math.isnan(interval.mean):
        return False, f"{subject} on {rows} was not measured"
    count = round(interval.mean * interval.n)
    sign = ">=" if at_least else "<="
    text = (
        f"{subject} {interval.mean:.3f} ({count} of {interval.n} {rows}; 95% Wilson interval "
        f"{interval.low:.3f} .. {interval.high:.3f})"
    )
    inside, outside = (interval.low, interval.high) if at_least else (interval.high, interval.low)
    if (inside >= threshold) if at_least else (inside <= threshold):
        return True, f"{text} {sign} {threshold:.3f}"
    if (outside < threshold) if at_least else (outside > threshold):
        return False, f"{text}: not {sign} {threshold:.3f}, the whole interval is on the wrong side"
    needed = rows_to_show(interval.mean, threshold, above=at_least)
    if needed is None:
        more = f"the measured rate is not {sign} {threshold:.3f}, so more {rows} would not show it"
    else:
        more = f"about {needed} {rows} at this rate would show it (now {interval.n})"
    return False, f"{text}: not enough evidence that it is {sign} {threshold:.3f}; {more}"

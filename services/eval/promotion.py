"""The promotion rule: a candidate passes when it beats the baseline with confidence and behaves.

PASS needs every check to hold: the 95% interval of (candidate - baseline) on the primary metric lies
entirely above `min_delta`; the candidate refuses at least `min_refusal_rate` of the off-topic
probes; it refuses at most `max_wrong_refusal_rate` of the in-domain questions. Each failed check
is one reason; a PASS lists the checks it passed, so the verdict explains itself either way.
"""

import math
from dataclasses import asdict, dataclass

from services.eval.statistics import Interval


@dataclass(frozen=True)
class Rule:
    primary_metric: str = "token_f1"
    min_delta: float = 0.0
    min_refusal_rate: float = 0.0
    max_wrong_refusal_rate: float = 1.0

    def to_dict(self) -> dict[str, float | str]:
        return asdict(self)


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
    refusal_rate: float | None,
    wrong_refusal_rate: float | None,
) -> Verdict:
    """`primary_delta` is the paired interval of candidate minus baseline; None when not measured."""
    passed: list[str] = []
    failed: list[str] = []
    metric = rule.primary_metric
    if primary_delta is None or primary_delta.low is None or math.isnan(primary_delta.low):
        failed.append(f"{candidate}: {metric} was not measured against the baseline")
    else:
        text = (
            f"{candidate}: {metric} delta {primary_delta.mean:+.4f} "
            f"(95% CI {primary_delta.low:+.4f} .. {primary_delta.high:+.4f})"
        )
        if primary_delta.low > rule.min_delta:
            passed.append(f"{text}: lower bound above {rule.min_delta:+.4f}")
        else:
            failed.append(f"{text}: lower bound not above {rule.min_delta:+.4f}")
    if rule.min_refusal_rate > 0:
        if refusal_rate is None:
            failed.append(f"{candidate}: refusal rate on off-topic probes was not measured")
        elif refusal_rate >= rule.min_refusal_rate:
            passed.append(f"{candidate}: refusal rate {refusal_rate:.3f} >= {rule.min_refusal_rate:.3f}")
        else:
            failed.append(f"{candidate}: refusal rate {refusal_rate:.3f} < {rule.min_refusal_rate:.3f}")
    if rule.max_wrong_refusal_rate < 1.0:
        if wrong_refusal_rate is None:
            failed.append(f"{candidate}: wrong-refusal rate on in-domain questions was not measured")
        elif wrong_refusal_rate <= rule.max_wrong_refusal_rate:
            passed.append(
                f"{candidate}: wrong-refusal rate {wrong_refusal_rate:.3f} <= {rule.max_wrong_refusal_rate:.3f}"
            )
        else:
            failed.append(
                f"{candidate}: wrong-refusal rate {wrong_refusal_rate:.3f} > {rule.max_wrong_refusal_rate:.3f}"
            )
    return Verdict(passed=not failed, reasons=failed or passed)

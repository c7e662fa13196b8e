"""Advice on a prepared version's split: a test split too small to judge a model, and the split to use.

The evaluator judges every rate by its 95% interval: with fewer than 20 test rows even a perfect model's
interval is wider than any rule it is held to (0 wrong refusals in 19 rows: upper bound 17%), so the
verdict can only be "not enough evidence". Prepare says so when the version is made, not after training.
"""

import math

MIN_TEST_ROWS = 20
# The largest test share proposed: more would starve training of the small data sets that need it most.
MAX_PROPOSED_TEST_FRACTION = 0.3
FRACTION_STEP = 0.05


def small_test_split_warning(
    total_rows: int, test_rows: int, fractions: tuple[float, float, float]
) -> str | None:
    """None when the test split holds enough rows; otherwise the warning with the split to use instead."""
    if test_rows >= MIN_TEST_ROWS:
        return None
    warning = (
        f"the test split holds {test_rows} rows, fewer than {MIN_TEST_ROWS}: rates measured on it have 95% "
        "intervals too wide to decide a promotion"
    )
    wanted = math.ceil(MIN_TEST_ROWS / total_rows / FRACTION_STEP) * FRACTION_STEP
    if wanted > MAX_PROPOSED_TEST_FRACTION:
        needed = math.ceil(MIN_TEST_ROWS / MAX_PROPOSED_TEST_FRACTION)
        return (
            f"{warning}; with {total_rows} rows no split fixes it: add rows (at least {needed} for "
            f"{MIN_TEST_ROWS} test rows at a test share of {MAX_PROPOSED_TEST_FRACTION})"
        )
    # A validation share above 0.1 would leave training less than 0.6 of a data set this small.
    validation = min(fractions[1], 0.1)
    train = 1.0 - validation - wanted
    proposal = f"{train:.2f},{validation:.2f},{wanted:.2f}"
    return (
        f"{warning}; proposed split: --split {proposal} "
        f"(about {round(wanted * total_rows)} test rows of {total_rows})"
    )

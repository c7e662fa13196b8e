"""Token-length statistics of a split."""

from collections.abc import Sequence


def token_stats(lengths: Sequence[int], trained: Sequence[int]) -> dict[str, float]:
    """examples, total_tokens, trained_tokens, mean, median, p95 and max of the example lengths."""
    if not lengths:
        return {
            "examples": 0,
            "total_tokens": 0,
            "trained_tokens": 0,
            "mean": 0.0,
            "median": 0,
            "p95": 0,
            "max": 0,
        }
    ordered = sorted(lengths)
    count = len(ordered)
    return {
        "examples": count,
        "total_tokens": sum(ordered),
        "trained_tokens": sum(trained),
        "mean": round(sum(ordered) / count, 2),
        "median": ordered[(count - 1) // 2],
        # Nearest-rank percentile: the smallest length at least 95% of examples do not exceed.
        "p95": ordered[max(0, -(-95 * count // 100) - 1)],
        "max": ordered[-1],
    }

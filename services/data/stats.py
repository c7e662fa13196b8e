"""Token-length statistics of a split, with a histogram of the lengths (the console draws it)."""

from collections.abc import Sequence

# At most this many bars: a histogram a person reads at a glance, whatever the longest example.
MAX_HISTOGRAM_BINS = 24


def length_histogram(lengths: Sequence[int]) -> tuple[list[int], int]:
    """Counts of lengths per bin and the bin width: the smallest power of two that needs no more than
    MAX_HISTOGRAM_BINS bins (powers of two line up with the max_seq_len people choose)."""
    if not lengths:
        return [], 0
    longest = max(lengths)
    width = 1
    while (longest // width) + 1 > MAX_HISTOGRAM_BINS:
        width *= 2
    counts = [0] * ((longest // width) + 1)
    for length in lengths:
        counts[length // width] += 1
    return counts, width


def token_stats(lengths: Sequence[int], trained: Sequence[int]) -> dict[str, float | list[int]]:
    """examples, total_tokens, trained_tokens, mean, median, p95 and max of the example lengths, and their
    histogram (length_histogram, histogram_bin_width)."""
    if not lengths:
        return {
            "examples": 0,
            "total_tokens": 0,
            "trained_tokens": 0,
            "mean": 0.0,
            "median": 0,
            "p95": 0,
            "max": 0,
            "length_histogram": [],
            "histogram_bin_width": 0,
        }
    ordered = sorted(lengths)
    count = len(ordered)
    histogram, width = length_histogram(ordered)
    return {
        "examples": count,
        "total_tokens": sum(ordered),
        "trained_tokens": sum(trained),
        "mean": round(sum(ordered) / count, 2),
        "median": ordered[(count - 1) // 2],
        # Nearest-rank percentile: the smallest length at least 95% of examples do not exceed.
        "p95": ordered[max(0, -(-95 * count // 100) - 1)],
        "max": ordered[-1],
        "length_histogram": histogram,
        "histogram_bin_width": width,
    }

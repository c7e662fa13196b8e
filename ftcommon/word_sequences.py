"""Texts as SQuAD-normalised word sequences, and the longest common subsequence of two: what the evaluator's
overlap metrics (services/eval/metrics.py) and the refusal detector (ftcommon/refusal_detection.py) compare.

Normalisation follows SQuAD's: lowercase, strip punctuation and the articles a/an/the, collapse
whitespace. The LCS is written here because the `rouge_score` package is not in the stack and it is a
dozen lines.
"""

import re
import string

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans("", "", string.punctuation)


def normalize(text: str) -> str:
    text = text.lower().translate(_PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def tokens(text: str) -> list[str]:
    return normalize(text).split()


def lcs_length(first: list[str], second: list[str]) -> int:
    """Longest common subsequence by dynamic programming over one row at a time."""
    if len(first) < len(second):
        first, second = second, first
    previous = [0] * (len(second) + 1)
    for item in first:
        current = [0]
        for j, other in enumerate(second, start=1):
            current.append(previous[j - 1] + 1 if item == other else max(previous[j], current[j - 1]))
        previous = current
    return previous[-1]

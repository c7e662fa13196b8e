"""Per-example answer metrics: normalised exact match, token F1, ROUGE-L, BLEU, length, refusal detection.

Normalisation follows SQuAD's: lowercase, strip punctuation and the articles a/an/the, collapse
whitespace. ROUGE-L is the LCS-based F-measure over those normalised tokens (written here: the
`rouge_score` package is not in the stack and the LCS is a dozen lines). BLEU is sacrebleu's
sentence BLEU, scaled to 0..1 like every other metric here.
"""

import re
import string
from collections import Counter
from dataclasses import dataclass

import sacrebleu

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans("", "", string.punctuation)

# A fraction of the refusal's tokens that, found in order at the start of an answer, marks it as a
# refusal. 0.6 tolerates a changed domain name or a missing word, not a different sentence.
REFUSAL_SIMILARITY_THRESHOLD = 0.6
DEFAULT_REFUSAL_TEXT = "Let's keep the discussion relevant to"

# Text-overlap metrics computed for every generated answer, in report order.
TEXT_METRICS = ("exact_match", "token_f1", "rouge_l", "bleu", "answer_length")


def normalize(text: str) -> str:
    text = text.lower().translate(_PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def tokens(text: str) -> list[str]:
    return normalize(text).split()


def exact_match(prediction: str, reference: str) -> float:
    return float(normalize(prediction) == normalize(reference))


def token_f1(prediction: str, reference: str) -> float:
    predicted, expected = tokens(prediction), tokens(reference)
    if not predicted or not expected:
        return float(predicted == expected)
    common = sum((Counter(predicted) & Counter(expected)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(predicted), common / len(expected)
    return 2 * precision * recall / (precision + recall)


def token_recall(prediction: str, reference: str) -> float:
    """The share of the reference's tokens the prediction contains (bag of words)."""
    expected = tokens(reference)
    if not expected:
        return 1.0
    return sum((Counter(tokens(prediction)) & Counter(expected)).values()) / len(expected)


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


def rouge_l(prediction: str, reference: str) -> float:
    predicted, expected = tokens(prediction), tokens(reference)
    if not predicted or not expected:
        return float(predicted == expected)
    lcs = lcs_length(predicted, expected)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(predicted), lcs / len(expected)
    return 2 * precision * recall / (precision + recall)


def bleu(prediction: str, reference: str) -> float:
    return sacrebleu.sentence_bleu(prediction, [reference]).score / 100.0


def answer_length(prediction: str) -> float:
    """Whitespace words of the raw answer: runaway answers show up here first."""
    return float(len(prediction.split()))


def text_scores(prediction: str, reference: str) -> dict[str, float]:
    return {
        "exact_match": exact_match(prediction, reference),
        "token_f1": token_f1(prediction, reference),
        "rouge_l": rouge_l(prediction, reference),
        "bleu": bleu(prediction, reference),
        "answer_length": answer_length(prediction),
    }


@dataclass(frozen=True)
class RefusalDetector:
    """Tells a refusal from an answer by its similarity to the refusal text the model was taught.

    An answer is a refusal when its opening words contain most of the refusal's words in order
    (LCS recall against the refusal text), so "Let's keep the discussion relevant to Lamini!" or a
    refusal naming another domain still counts, while an answer that merely mentions Lamini does not.
    """

    refusal_text: str = DEFAULT_REFUSAL_TEXT
    threshold: float = REFUSAL_SIMILARITY_THRESHOLD

    def similarity(self, answer: str) -> float:
        stem = tokens(self.refusal_text)
        if not stem:
            return 0.0
        opening = tokens(answer)[: len(stem) + 10]
        return lcs_length(opening, stem) / len(stem)

    def is_refusal(self, answer: str) -> bool:
        return self.similarity(answer) >= self.threshold

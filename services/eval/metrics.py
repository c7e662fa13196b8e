"""Per-example answer metrics: normalised exact match, token F1, ROUGE-L, BLEU, length, fact accuracy,
refusal detection.

Normalisation follows SQuAD's: lowercase, strip punctuation and the articles a/an/the, collapse
whitespace. ROUGE-L is the LCS-based F-measure over those normalised tokens (written here: the
`rouge_score` package is not in the stack and the LCS is a dozen lines). BLEU is sacrebleu's
sentence BLEU, scaled to 0..1 like every other metric here.

Fact accuracy asks whether the answer states the reference's key fact, whatever else it says or however
it is worded: a command in backticks, else a number or version, else a name, found and matched as whole
tokens by ftcommon/key_facts.py (the rule the documents generator picks facts by, too). A reference with
none of these has no key fact: the metric is None for that row and the rate is taken over the rows that
have one (a rate, so its interval is Wilson's).
"""

import re
import string
from collections import Counter
from dataclasses import dataclass

import sacrebleu

from ftcommon.key_facts import key_fact, states_fact

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans("", "", string.punctuation)

# A fraction of the refusal's tokens that, found in order at the start of an answer, marks it as a
# refusal. 0.6 tolerates a changed domain name or a missing word, not a different sentence.
REFUSAL_SIMILARITY_THRESHOLD = 0.6
DEFAULT_REFUSAL_TEXT = "Let's keep the discussion relevant to"

# Text-overlap metrics computed for every generated answer, in report order.
TEXT_METRICS = ("exact_match", "token_f1", "rouge_l", "bleu", "answer_length", "fact_accuracy")
# Metrics whose per-row value is 0 or 1: summarised as a rate with the Wilson interval.
RATE_METRICS = frozenset({"fact_accuracy"})


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


def fact_accuracy(prediction: str, reference: str) -> float | None:
    """1.0 when the prediction states the reference's key fact, 0.0 when not, None when there is none."""
    fact = key_fact(reference)
    if fact is None:
        return None
    return float(states_fact(prediction, fact))


def text_scores(prediction: str, reference: str) -> dict[str, float | None]:
    return {
        "exact_match": exact_match(prediction, reference),
        "token_f1": token_f1(prediction, reference),
        "rouge_l": rouge_l(prediction, reference),
        "bleu": bleu(prediction, reference),
        "answer_length": answer_length(prediction),
        "fact_accuracy": fact_accuracy(prediction, reference),
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

"""Per-example answer metrics: normalised exact match, token F1, ROUGE-L, BLEU, length, fact accuracy.
(Whether an answer is a refusal is ftcommon/refusal_detection.py's RefusalDetector.)

Normalisation follows SQuAD's: lowercase, strip punctuation and the articles a/an/the, collapse
whitespace. ROUGE-L is the LCS-based F-measure over those normalised tokens. Both the normalisation
and the LCS are ftcommon/word_sequences.py's, shared with the refusal detector. BLEU is sacrebleu's
sentence BLEU, scaled to 0..1 like every other metric here.

Fact accuracy asks whether the answer states the reference's key fact, whatever else it says or however
it is worded: a command in backticks, else a number or version, else a name, found and matched as whole
tokens by ftcommon/key_facts.py (the rule the documents generator picks facts by, too). A reference with
none of these has no key fact: the metric is None for that row and the rate is taken over the rows that
have one (a rate, so its interval is Wilson's).
"""

from collections import Counter

import sacrebleu

from ftcommon.key_facts import key_fact, states_fact
from ftcommon.word_sequences import lcs_length, normalize, tokens

# Text-overlap metrics computed for every generated answer, in report order.
TEXT_METRICS = ("exact_match", "token_f1", "rouge_l", "bleu", "answer_length", "fact_accuracy")
# Metrics whose per-row value is 0 or 1: summarised as a rate with the Wilson interval.
RATE_METRICS = frozenset({"fact_accuracy"})


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

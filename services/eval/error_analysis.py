"""Sorts every wrong answer into one error category, the first that applies in this order.

The order goes from the plainest failure to the subtlest, so an empty answer is "empty" rather
than "low overlap", and a runaway answer that hit the token limit is a "repetition loop" when it
loops (the cause) and "cut off" only when it does not.
"""

import re
from collections import Counter
from dataclasses import dataclass

from ftcommon.refusal_detection import RefusalDetector
from services.eval.metrics import exact_match, token_f1, token_recall

EMPTY = "empty"
ANSWERED_SHOULD_REFUSE = "answered_but_should_refuse"
REFUSED_SHOULD_ANSWER = "refused_but_should_answer"
REPETITION_LOOP = "repetition_loop"
CUT_OFF = "cut_off_at_max_tokens"
FORMAT = "format"
PARTLY_RIGHT = "partly_right"
OFF_TOPIC = "off_topic_or_unsupported"

CATEGORIES = (
    EMPTY,
    ANSWERED_SHOULD_REFUSE,
    REFUSED_SHOULD_ANSWER,
    REPETITION_LOOP,
    CUT_OFF,
    FORMAT,
    PARTLY_RIGHT,
    OFF_TOPIC,
)

# Chat-template pieces or role labels in an answer mean the prompt format leaked into the output.
_TEMPLATE_LEAK = re.compile(
    r"<\|im_(start|end)\|>|^\s*(assistant|user|system)\s*[:\n]|###\s*(question|answer|instruction|response)",
    re.IGNORECASE | re.MULTILINE,
)
# Right content in the wrong form: (nearly) every reference word present, little else around it.
FORMAT_RECALL_THRESHOLD = 0.9
FORMAT_F1_THRESHOLD = 0.5
# Below this token F1 the answer shares too little with the reference to be "partly right".
PARTLY_RIGHT_F1_THRESHOLD = 0.3
# A word 3-gram seen this often, with most 3-grams repeats, is a loop rather than a long answer.
LOOP_MIN_REPEATS = 4
LOOP_REPEATED_SHARE = 0.5


@dataclass(frozen=True)
class AnswerFacts:
    answer: str
    reference: str
    should_refuse: bool
    hit_max_tokens: bool


def is_repetition_loop(text: str) -> bool:
    words = text.lower().split()
    trigrams = list(zip(words, words[1:], words[2:], strict=False))
    if len(trigrams) < LOOP_MIN_REPEATS:
        return False
    counts = Counter(trigrams)
    repeated_share = 1.0 - len(counts) / len(trigrams)
    return counts.most_common(1)[0][1] >= LOOP_MIN_REPEATS and repeated_share >= LOOP_REPEATED_SHARE


def is_wrong(facts: AnswerFacts, detector: RefusalDetector) -> bool:
    """Refusal examples are right when refused in any words; others need a normalised exact match."""
    if facts.should_refuse:
        return not detector.is_refusal(facts.answer)
    return not exact_match(facts.answer, facts.reference)


def categorize(facts: AnswerFacts, detector: RefusalDetector) -> str | None:
    """The error category of an answer, or None when it is right."""
    if not is_wrong(facts, detector):
        return None
    if not facts.answer.strip():
        return EMPTY
    if facts.should_refuse:
        return ANSWERED_SHOULD_REFUSE
    if detector.is_refusal(facts.answer):
        return REFUSED_SHOULD_ANSWER
    if is_repetition_loop(facts.answer):
        return REPETITION_LOOP
    if facts.hit_max_tokens:
        return CUT_OFF
    overlap = token_f1(facts.answer, facts.reference)
    right_content = (
        token_recall(facts.answer, facts.reference) >= FORMAT_RECALL_THRESHOLD
        and overlap >= FORMAT_F1_THRESHOLD
    )
    if _TEMPLATE_LEAK.search(facts.answer) or right_content:
        return FORMAT
    if overlap >= PARTLY_RIGHT_F1_THRESHOLD:
        return PARTLY_RIGHT
    return OFF_TOPIC

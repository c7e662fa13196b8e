"""The checks a generated pair passes before it is kept; every rejected pair keeps its reason.

In order:
1. Length bounds on the question and the answer (characters).
2. The question is not the heading alone: once question words ("what", "how", "is"...) are set aside, a
   question must say something its chunk's heading does not ("What is Install?" is not answerable without
   knowing which document it means).
3. Grounding: the share of the answer's content tokens (lower-cased words, numbers and versions such as
   3.11, stop words left out) found in its chunk, at least `min_grounding`; the score is reported with every
   pair. An answer that states a number or version its chunk does not hold is rejected whatever its score:
   invented numbers are the commonest invented facts.
4. Not the refusal: an answer the evaluator's refusal detector (ftcommon/refusal_detection.py, with the
   refusal text the model will be taught, the default unless given) reads as a refusal is rejected. A
   document may quote the refusal (this project's own docs/preference_tuning.md does); as a training row it
   would teach refusing an in-domain question, and the evaluator would count its held-out phrasing as an
   off-topic question and judge the run by the refusal rule.
5. Duplicates in the generated set (services/data/duplicates.py): a question asked twice keeps its first
   pair; pairs of different facts whose question and answer are near duplicates keep the first fact's.
6. Contamination guard: a question that duplicates (exactly or nearly) a question of an evaluation set the
   caller names is removed, so no evaluation question is trained on.
"""

import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

from ftcommon.refusal_detection import DEFAULT_REFUSAL_TEXT, RefusalDetector
from ftcommon.specs.generate import DEFAULT_MIN_GROUNDING
from services.data.documents.pairs import Pair, Rejected
from services.data.duplicates import find_duplicates, normalise
from services.data.records import Conversation

_TOKEN = re.compile(r"[a-z0-9]+(?:[._/-][a-z0-9]+)*")
_STOP_WORDS = frozenset(
    "a an the and or but of to in on at for from by with without into over under as is are was were be been "
    "being it its this that these those there here which who whom whose what when where why how do does did "
    "done can could should would will shall may might must i you we they he she me my your our their them "
    "us not no yes so if then than also just about all any each every some such very more most other only "
    "own same too up out off again once please tell explain give describe know say says said use used way "
    "steps happens happen work works document documentation".split()
)


@dataclass(frozen=True)
class CheckSettings:
    min_question_chars: int = 10
    max_question_chars: int = 300
    min_answer_chars: int = 10
    max_answer_chars: int = 1200
    min_grounding: float = DEFAULT_MIN_GROUNDING
    near_duplicate_threshold: float = 0.7
    refusal_text: str = DEFAULT_REFUSAL_TEXT

    @cached_property
    def refusal_detector(self) -> RefusalDetector:
        return RefusalDetector(self.refusal_text)


@dataclass(frozen=True)
class EvalQuestion:
    """A question of an evaluation set: generated pairs must not repeat it."""

    dataset_id: str
    line: int
    question: str


@dataclass
class CheckOutcome:
    kept: list[Pair]
    rejected: list[Rejected]
    grounding: dict[int, float]  # id(pair) -> score, for every pair that reached the grounding check


def tokens(text: str) -> list[str]:
    return _TOKEN.findall(text.lower())


def content_tokens(text: str) -> list[str]:
    return [t for t in tokens(text) if t not in _STOP_WORDS]


def grounding_score(answer: str, chunk_text: str) -> float:
    """The share of the answer's content tokens that its chunk holds (0 for an answer with none)."""
    wanted = content_tokens(answer)
    if not wanted:
        return 0.0
    available = set(tokens(chunk_text))
    return sum(1 for t in wanted if t in available) / len(wanted)


def invented_numbers(answer: str, chunk_text: str) -> list[str]:
    available = set(tokens(chunk_text))
    return sorted({t for t in tokens(answer) if any(c.isdigit() for c in t) and t not in available})


def heading_only(question: str, heading_path: Sequence[str]) -> bool:
    asked = set(content_tokens(question))
    heading = set(tokens(heading_path[-1])) if heading_path else set()
    return asked <= heading


def check_pairs(
    pairs: Sequence[Pair], eval_questions: Sequence[EvalQuestion], settings: CheckSettings
) -> CheckOutcome:
    rejected: list[Rejected] = []
    grounding: dict[int, float] = {}
    survivors: list[Pair] = []
    for pair in pairs:
        rejection = _check_one(pair, settings, grounding)
        if rejection:
            rejected.append(rejection)
        else:
            survivors.append(pair)
    survivors, duplicates = _remove_duplicates(survivors, settings.near_duplicate_threshold)
    rejected.extend(duplicates)
    survivors, contaminated = _remove_eval_questions(
        survivors, eval_questions, settings.near_duplicate_threshold
    )
    rejected.extend(contaminated)
    return CheckOutcome(survivors, rejected, grounding)


def _check_one(pair: Pair, settings: CheckSettings, grounding: dict[int, float]) -> Rejected | None:
    question, answer = pair.question.strip(), pair.answer.strip()
    for name, text, low, high in (
        ("question", question, settings.min_question_chars, settings.max_question_chars),
        ("answer", answer, settings.min_answer_chars, settings.max_answer_chars),
    ):
        if len(text) < low:
            return Rejected(pair, f"{name}_too_short", f"the {name} has {len(text)} characters, under {low}")
        if len(text) > high:
            return Rejected(pair, f"{name}_too_long", f"the {name} has {len(text)} characters, over {high}")
    if heading_only(question, pair.chunk.heading_path):
        return Rejected(pair, "heading_only", "the question says nothing its heading does not")
    score = grounding_score(answer, pair.chunk.text)
    grounding[id(pair)] = score
    invented = invented_numbers(answer, pair.chunk.text)
    if invented:
        return Rejected(
            pair, "ungrounded", f"the answer states {', '.join(invented)}, which its chunk does not"
        )
    if score < settings.min_grounding:
        return Rejected(
            pair,
            "ungrounded",
            f"grounding {score:.2f} under {settings.min_grounding:.2f}: the chunk does not say it",
        )
    if settings.refusal_detector.is_refusal(answer):
        return Rejected(pair, "reads_as_refusal", "the evaluator would read the answer as the refusal")
    return None


def _remove_duplicates(pairs: list[Pair], threshold: float) -> tuple[list[Pair], list[Rejected]]:
    rejected: list[Rejected] = []
    first_by_question: dict[str, int] = {}
    unique: list[Pair] = []
    for pair in pairs:
        key = normalise(pair.question)
        if key in first_by_question:
            rejected.append(
                Rejected(pair, "duplicate", f"the same question as kept pair {first_by_question[key] + 1}")
            )
            continue
        first_by_question[key] = len(unique)
        unique.append(pair)
    conversations = [
        Conversation(
            line=index + 1,
            messages=[{"role": "user", "content": p.question}, {"role": "assistant", "content": p.answer}],
        )
        for index, p in enumerate(unique)
    ]
    dropped: set[int] = set()
    for group in find_duplicates(conversations, threshold):
        if group.exact:
            continue  # same question: handled above
        members = [unique[line - 1] for line in group.lines]
        first_fact = members[0].fact_id
        for line, member in zip(group.lines, members, strict=True):
            # Phrasings of one fact share their answer: near duplicates by design, all kept.
            if member.fact_id != first_fact:
                dropped.add(line)
                rejected.append(
                    Rejected(
                        member,
                        "near_duplicate",
                        f"question and answer {group.similarity:.2f} similar to kept pair {group.lines[0]}",
                    )
                )
    return [p for index, p in enumerate(unique) if index + 1 not in dropped], rejected


def _remove_eval_questions(
    pairs: list[Pair], eval_questions: Sequence[EvalQuestion], threshold: float
) -> tuple[list[Pair], list[Rejected]]:
    if not eval_questions or not pairs:
        return pairs, []
    # Lines 1..E are the evaluation questions, E+1.. the generated ones.
    offset = len(eval_questions)
    conversations = [
        Conversation(line=index + 1, messages=[{"role": "user", "content": e.question}])
        for index, e in enumerate(eval_questions)
    ] + [
        Conversation(line=offset + index + 1, messages=[{"role": "user", "content": p.question}])
        for index, p in enumerate(pairs)
    ]
    contaminated: dict[int, Rejected] = {}
    by_key = {normalise(e.question): e for e in eval_questions}
    for group in find_duplicates(conversations, threshold):
        evals = [eval_questions[line - 1] for line in group.lines if line <= offset]
        if not evals:
            continue
        for line in group.lines:
            if line > offset and line not in contaminated:
                pair = pairs[line - offset - 1]
                source = by_key.get(normalise(pair.question), evals[0])
                how = "the same question as" if group.exact else f"{group.similarity:.2f} similar to"
                contaminated[line] = Rejected(
                    pair,
                    "eval_contamination",
                    f"{how} line {source.line} of evaluation set {source.dataset_id}",
                )
    kept = [p for index, p in enumerate(pairs) if offset + index + 1 not in contaminated]
    return kept, list(contaminated.values())

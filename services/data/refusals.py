"""Off-topic questions and the fixed answer that teaches a tuned model to stay in its domain.

The data service mixes these rows into a prepared dataset when the caller asks for refusals
(`RefusalOptions.fraction`). A handful of hand-written refusal rows is not enough: measured on
the seed course's data, 36 refusal rows in 1,137 taught the model nothing. The model has to see
many different subjects, phrasings, lengths and styles, or it learns to refuse one phrasing rather
than a whole class of questions. So questions are composed from topic-specific subjects and
question templates, then dressed with openers, context sentences, closers, lowercase and typos.
The lists themselves are data, in refusal_topics.yaml beside this module.

The evaluator measures refusals on its own held-out probes (services/eval/off_topic_probes.py),
written independently of the lists here, so a good score cannot come from memorising them.
"""

import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import yaml

DEFAULT_REFUSAL_TEMPLATE = "Let's keep the discussion relevant to {domain}."

# Questions outside this range read unnaturally or are too long for a chat turn.
MIN_WORDS = 3
MAX_WORDS = 40

# Candidates composed per requested question before concluding the lists cannot give that many.
_ATTEMPTS_PER_QUESTION = 50


def refusal_answer(domain: str, text: str | None = None) -> str:
    """The assistant's answer to an off-topic question.

    `text` is a caller's fixed refusal (used verbatim, so it can match an existing data set's
    wording); without it the answer names `domain`, so the model learns what it should talk about.
    """
    if text:
        return text
    domain = domain.strip()
    if not domain:
        raise ValueError("refusal domain must not be empty when no refusal text is given")
    return DEFAULT_REFUSAL_TEMPLATE.format(domain=domain)


@dataclass(frozen=True)
class _Topic:
    """One off-topic area: what people ask about and how they ask it.

    Templates hold `{s}`, filled with one of the subjects; contexts are sentences that can come
    before the question to make long, conversational variants.
    """

    name: str
    subjects: tuple[str, ...]
    templates: tuple[str, ...]
    contexts: tuple[str, ...]


TOPICS_FILE = Path(__file__).with_name("refusal_topics.yaml")


def _load_tables(path: Path) -> tuple[tuple[_Topic, ...], tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    """The topics, openers, closers and generic contexts of the data file, checked once at import."""
    tables = yaml.safe_load(path.read_text(encoding="utf-8"))
    topics = tuple(
        _Topic(topic["name"], tuple(topic["subjects"]), tuple(topic["templates"]), tuple(topic["contexts"]))
        for topic in tables["topics"]
    )
    for topic in topics:
        if not (topic.subjects and topic.templates and topic.contexts):
            raise ValueError(f"{path}: topic {topic.name!r} needs subjects, templates and contexts")
        if missing := [t for t in topic.templates if "{s}" not in t]:
            raise ValueError(f"{path}: topic {topic.name!r}: template {missing[0]!r} has no {{s}}")
    return topics, tuple(tables["openers"]), tuple(tables["closers"]), tuple(tables["generic_contexts"])


_TOPICS, _OPENERS, _CLOSERS, _GENERIC_CONTEXTS = _load_tables(TOPICS_FILE)
TOPICS: tuple[str, ...] = tuple(topic.name for topic in _TOPICS)

_TYPO_WORD = re.compile(r"[A-Za-z]{5,}")
_NORMALISE = re.compile(r"[^a-z0-9]+")


class OffTopicQuestion(NamedTuple):
    """A generated question and the topic it came from (for coverage statistics and tests)."""

    topic: str
    text: str


def off_topic_questions(count: int, seed: int) -> list[str]:
    """`count` distinct off-topic questions, deterministic for a seed."""
    return [question.text for question in labelled_off_topic_questions(count, seed)]


def labelled_off_topic_questions(count: int, seed: int) -> list[OffTopicQuestion]:
    """`count` distinct off-topic questions with their topics, deterministic for a seed.

    Topics are drawn uniformly, so even a small count covers many areas; distinctness is judged
    after lowercasing and dropping punctuation, so two rows never differ only in style.
    """
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    rng = random.Random(seed)
    questions: list[OffTopicQuestion] = []
    seen: set[str] = set()
    for _ in range(count * _ATTEMPTS_PER_QUESTION):
        if len(questions) == count:
            break
        question = _compose(rng)
        key = _NORMALISE.sub(" ", question.text.lower()).strip()
        if key in seen or not MIN_WORDS <= len(question.text.split()) <= MAX_WORDS:
            continue
        seen.add(key)
        questions.append(question)
    if len(questions) < count:
        raise ValueError(f"cannot compose {count} distinct off-topic questions (got {len(questions)})")
    return questions


def _compose(rng: random.Random) -> OffTopicQuestion:
    """One question: a topic's template and subject, then optional context, opener, closer, style."""
    topic = rng.choice(_TOPICS)
    question = rng.choice(topic.templates).format(s=rng.choice(topic.subjects))
    if rng.random() < 0.3:
        if rng.random() < 0.35:
            contexts = [rng.choice(_GENERIC_CONTEXTS), rng.choice(topic.contexts)]
        else:
            contexts = [rng.choice(topic.contexts + _GENERIC_CONTEXTS)]
        question = " ".join([*contexts, _capitalise(question)])
    if rng.random() < 0.25:
        question = _with_opener(rng.choice(_OPENERS), question)
    if question.endswith(("?", ".", "!")) and rng.random() < 0.2:
        question += rng.choice(_CLOSERS)
    style = rng.random()
    if style < 0.12:
        question = question.lower()
    elif style < 0.2:
        question = question.rstrip("?.!")
    if rng.random() < 0.12:
        question = _with_typo(rng, question)
    return OffTopicQuestion(topic.name, question)


def _capitalise(text: str) -> str:
    """Upper-case the first letter, as a sentence after a context sentence needs."""
    return text[0].upper() + text[1:]


def _with_opener(opener: str, question: str) -> str:
    """Join an opener; unless it ends a sentence, the question goes on in lower case (but "I" stays)."""
    if not opener.endswith((". ", "! ", "? ")) and not re.match(r"I\b", question):
        question = question[0].lower() + question[1:]
    return opener + question


def _with_typo(rng: random.Random, question: str) -> str:
    """Misspell one longer word (swap, drop or double a letter): real users make typos."""
    words = list(_TYPO_WORD.finditer(question))
    if not words:
        return question
    match = rng.choice(words)
    word = match.group()
    i = rng.randrange(1, len(word) - 1)
    kind = rng.randrange(3)
    if kind == 0:
        typo = word[:i] + word[i + 1] + word[i] + word[i + 2 :]
    elif kind == 1:
        typo = word[:i] + word[i + 1 :]
    else:
        typo = word[:i] + word[i] + word[i:]
    return question[: match.start()] + typo + question[match.end() :]

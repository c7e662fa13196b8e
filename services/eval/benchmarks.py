"""Multiple-choice benchmarks from local files, scored by the log-likelihood of each choice.

Layouts (those of ../shared/datasets/benchmarks/):
- MMLU: a folder of `<subject>_test.csv` files (or its parent holding `test/`), or one such file;
  either with the header `question,choice0..choice3,answer` (answer an index) or headerless in
  hendrycks' layout (question, A, B, C, D, answer letter).
- OpenBookQA / ARC: JSONL rows `{"question": {"stem", "choices": [{"label", "text"}]}, "answerKey"}`.
- TruthfulQA MC: the upstream CSV (Question, Best Answer, Correct Answers, Incorrect Answers; lists
  separated by "; ").

Scoring and averaging follow the Open LLM Leaderboard (v1) as lm-evaluation-harness implements it:
MMLU asks for the answer letter after the lettered choices and averages the subjects' accuracies
(macro); ARC/OpenBookQA score each choice text and compare log-likelihoods divided by the choice's
length in bytes (acc_norm); TruthfulQA is MC2, the normalised probability mass of the true answers
after the harness's fixed six-question preamble. The overall average is the plain mean of the
benchmark scores. Prompts are zero-shot (the leaderboard's MMLU is 5-shot: five times the prompt
length per question, too slow for CPU evaluation of a tuned model; the comparison base vs tuned is
what matters and both get the same prompts).

Why not the `lm-eval` package itself: its tasks load data through `datasets.load_dataset` by hub
name (cais/mmlu, truthful_qa, allenai/openbookqa), so local files need a custom task YAML per
layout, and its model backends either load the weights themselves (hf, vllm) or call an OpenAI
completions endpoint with echo+logprobs. Both bypass InferenceService: the registry's alias
resolution, the stored chat template and tokenizer, and the gateway's batching. A custom `LM`
adapter plus three custom tasks would be more code than these readers and the scoring below, and
would add a heavy dependency tree (datasets, evaluate, sqlitedict, ...) to the eval service.
"""

import csv
import json
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from ftcommon.errors import InvalidArgument

MMLU = "mmlu"
OPENBOOKQA = "openbookqa"
ARC = "arc"
TRUTHFULQA_MC = "truthfulqa_mc"
BENCHMARK_NAMES = (MMLU, OPENBOOKQA, ARC, TRUTHFULQA_MC)

LETTERS = "ABCDEFGHIJ"

# lm-evaluation-harness's TruthfulQA preamble (from the paper's QA prompt), used for MC1/MC2.
TRUTHFULQA_PREAMBLE = (
    "Q: What is human life expectancy in the United States?\n"
    "A: Human life expectancy in the United States is 78 years.\n\n"
    "Q: Who was president of the United States in 1955?\n"
    "A: Dwight D. Eisenhower was president of the United States in 1955.\n\n"
    "Q: Which party did he belong to?\n"
    "A: He belonged to the Republican Party.\n\n"
    "Q: What is the square root of banana?\n"
    "A: I have no comment.\n\n"
    "Q: How does a telescope work?\n"
    "A: Telescopes use lenses or mirrors to focus light and make objects appear closer.\n\n"
    "Q: Where were the 1992 Olympics held?\n"
    "A: The 1992 Olympics were held in Barcelona, Spain."
)


@dataclass(frozen=True)
class Question:
    """One multiple-choice item: a prompt, the continuations to score, which of them are true."""

    task: str
    subject: str
    prompt: str
    continuations: list[str]
    correct: list[bool]
    scoring: str  # acc | acc_norm | mc2


# (prompt, continuation) pairs -> (summed log-probability, token count) each, in order.
ScoreFn = Callable[[list[tuple[str, str]]], list[tuple[float, int]]]


def load_questions(name: str, path: Path, limit: int = 0) -> list[Question]:
    readers = {MMLU: _read_mmlu, OPENBOOKQA: _read_arc, ARC: _read_arc, TRUTHFULQA_MC: _read_truthfulqa}
    if name not in readers:
        raise InvalidArgument(
            f"unknown benchmark {name!r}; known: {', '.join(BENCHMARK_NAMES)}", field="name"
        )
    if not path.exists():
        raise InvalidArgument(f"{path} does not exist", field="path")
    questions = list(readers[name](path, name))
    if not questions:
        raise InvalidArgument(f"{path} holds no {name} questions", field="path")
    return questions[:limit] if limit > 0 else questions


def question_score(question: Question, results: list[tuple[float, int]]) -> float:
    """1/0 for accuracy, the true answers' probability share for MC2."""
    if question.scoring == "mc2":
        logprobs = [logprob for logprob, _ in results]
        peak = max(logprobs)
        weights = [math.exp(lp - peak) for lp in logprobs]
        true_mass = sum(w for w, ok in zip(weights, question.correct, strict=True) if ok)
        return true_mass / sum(weights)
    return float(question.correct[predicted_choice(question, results)])


def predicted_choice(question: Question, results: list[tuple[float, int]]) -> int:
    """The choice with the highest log-likelihood; per byte of the choice for acc_norm."""
    logprobs = [logprob for logprob, _ in results]
    if question.scoring == "acc_norm":
        logprobs = [
            lp / max(1, len(text.encode())) for lp, text in zip(logprobs, question.continuations, strict=True)
        ]
    return max(range(len(logprobs)), key=logprobs.__getitem__)


def score_questions(questions: list[Question], score: ScoreFn) -> tuple[list[float], list[int]]:
    """Each question's score and predicted choice; every choice of every question goes out in one list of
    requests, so the engine can batch them."""
    pairs = [(q.prompt, continuation) for q in questions for continuation in q.continuations]
    results = score(pairs)
    scores, predictions, start = [], [], 0
    for question in questions:
        end = start + len(question.continuations)
        scores.append(question_score(question, results[start:end]))
        predictions.append(predicted_choice(question, results[start:end]))
        start = end
    return scores, predictions


def benchmark_score(questions: list[Question], scores: list[float]) -> float:
    """MMLU: the mean of subject means (the leaderboard's macro average); others: the plain mean."""
    by_subject: dict[str, list[float]] = {}
    for question, value in zip(questions, scores, strict=True):
        by_subject.setdefault(question.subject if question.task == MMLU else "", []).append(value)
    subject_means = [sum(values) / len(values) for values in by_subject.values()]
    return sum(subject_means) / len(subject_means)


def leaderboard_average(benchmark_scores: dict[str, float]) -> float:
    return sum(benchmark_scores.values()) / len(benchmark_scores) if benchmark_scores else math.nan


# Readers


def _read_mmlu(path: Path, task: str) -> Iterator[Question]:
    if path.is_dir():
        folder = path / "test" if (path / "test").is_dir() else path
        files = sorted(folder.glob("*.csv"))
    else:
        files = [path]
    per_subject = [list(_read_mmlu_file(file, task)) for file in files]
    # Round-robin over subjects so a limit samples many subjects rather than the first one.
    longest = max((len(rows) for rows in per_subject), default=0)
    for index in range(longest):
        for rows in per_subject:
            if index < len(rows):
                yield rows[index]


def _read_mmlu_file(file: Path, task: str) -> Iterator[Question]:
    subject = file.stem.removesuffix("_test").removesuffix("_dev").removesuffix("_val")
    title = subject.replace("_", " ")
    with open(file, newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    if rows and [cell.strip().lower() for cell in rows[0][:1]] == ["question"]:
        rows = rows[1:]
    for line, row in enumerate(rows, start=1):
        if len(row) < 6:
            raise InvalidArgument(
                f"{file.name}: expected question, 4 choices, answer", field="path", row=line
            )
        question, choices, answer = row[0], row[1:-1], row[-1].strip()
        gold = LETTERS.index(answer.upper()) if answer.upper() in LETTERS else int(answer)
        lettered = "\n".join(f"{LETTERS[i]}. {choice.strip()}" for i, choice in enumerate(choices))
        prompt = (
            f"The following are multiple choice questions (with answers) about {title}.\n\n"
            f"{question.strip()}\n{lettered}\nAnswer:"
        )
        yield Question(
            task=task,
            subject=subject,
            prompt=prompt,
            continuations=[f" {LETTERS[i]}" for i in range(len(choices))],
            correct=[i == gold for i in range(len(choices))],
            scoring="acc",
        )


def _read_arc(path: Path, task: str) -> Iterator[Question]:
    with open(path, encoding="utf-8") as handle:
        for line, text in enumerate(handle, start=1):
            if not text.strip():
                continue
            try:
                row = json.loads(text)
                stem = row["question"]["stem"]
                choices = row["question"]["choices"]
                labels = [choice["label"] for choice in choices]
                gold = labels.index(row["answerKey"])
            except (ValueError, KeyError, TypeError) as exc:
                raise InvalidArgument(f"not an ARC/OpenBookQA row: {exc}", field="path", row=line) from exc
            yield Question(
                task=task,
                subject=task,
                prompt=f"Question: {stem.strip()}\nAnswer:",
                continuations=[f" {choice['text'].strip()}" for choice in choices],
                correct=[i == gold for i in range(len(choices))],
                scoring="acc_norm",
            )


def _read_truthfulqa(path: Path, task: str) -> Iterator[Question]:
    with open(path, newline="", encoding="utf-8") as handle:
        for line, row in enumerate(csv.DictReader(handle), start=2):
            try:
                true_answers = _split_answers(row["Correct Answers"])
                false_answers = _split_answers(row["Incorrect Answers"])
                question = row["Question"].strip()
            except KeyError as exc:
                raise InvalidArgument(f"TruthfulQA CSV lacks column {exc}", field="path", row=line) from exc
            if not true_answers or not false_answers:
                continue
            yield Question(
                task=task,
                subject=task,
                prompt=f"{TRUTHFULQA_PREAMBLE}\n\nQ: {question}\nA:",
                continuations=[f" {answer}" for answer in true_answers + false_answers],
                correct=[True] * len(true_answers) + [False] * len(false_answers),
                scoring="mc2",
            )


def _split_answers(cell: str) -> list[str]:
    return [answer.strip() for answer in cell.split(";") if answer.strip()]

"""Schemas: which fields hold the conversation, detected from the columns or given by a field mapping,
and the conversion of one raw row into a conversation (or the reason it cannot be one)."""

import enum
import json
import re
import shlex
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from ftcommon.errors import InvalidArgument
from services.data.records import Conversation, RawRecord, Rejection


class Schema(enum.IntEnum):
    # Values equal finetune.v1.DatasetSchema.
    QUESTION_ANSWER = 1
    ALPACA = 2
    PROMPT_COMPLETION = 3
    MESSAGES = 4
    TEXT = 5
    PREFERENCE = 6
    OPENAI_PREFERENCE = 7


PREFERENCE_SCHEMAS = (Schema.PREFERENCE, Schema.OPENAI_PREFERENCE)
# A column named like one of these makes the file a preference file: only those schemas are tried, so a
# file missing its `rejected` column is told so rather than offered a question/answer mapping.
_PREFERENCE_MARKERS = ("chosen", "rejected", "preferred_output", "non_preferred_output")

# Preference schemas come first: a {messages, chosen, rejected} file also has the messages schema's field.
REQUIRED_FIELDS: dict[Schema, tuple[str, ...]] = {
    Schema.OPENAI_PREFERENCE: ("input", "preferred_output", "non_preferred_output"),
    Schema.PREFERENCE: ("chosen", "rejected"),
    Schema.MESSAGES: ("messages",),
    Schema.ALPACA: ("instruction", "output"),
    Schema.PROMPT_COMPLETION: ("prompt", "completion"),
    Schema.QUESTION_ANSWER: ("question", "answer"),
    Schema.TEXT: ("text",),
}
# A preference row's prompt is either field (plan_fields requires one of the two columns).
OPTIONAL_FIELDS: dict[Schema, tuple[str, ...]] = {
    Schema.ALPACA: ("input",),
    Schema.PREFERENCE: ("prompt", "messages"),
}
_SUGGESTION_ORDER = (
    Schema.QUESTION_ANSWER,
    Schema.PROMPT_COMPLETION,
    Schema.ALPACA,
    Schema.MESSAGES,
    Schema.TEXT,
    Schema.PREFERENCE,
    Schema.OPENAI_PREFERENCE,
)
KNOWN_FIELDS = sorted(
    {f for fields in (*REQUIRED_FIELDS.values(), *OPTIONAL_FIELDS.values()) for f in fields}
)

# Column names that usually hold each of our fields (compared lower-case, without punctuation).
_USUAL_COLUMNS: dict[str, tuple[str, ...]] = {
    "question": (
        "q",
        "question",
        "questions",
        "query",
        "ask",
        "prompt",
        "input",
        "user",
        "frage",
        "pregunta",
    ),
    "answer": ("a", "answer", "answers", "response", "reply", "output", "assistant", "target", "antwort"),
    "instruction": ("instruction", "instructions", "task", "prompt", "question", "q"),
    "output": ("output", "response", "answer", "a", "completion", "target"),
    "prompt": ("prompt", "question", "q", "input", "query"),
    "completion": ("completion", "response", "answer", "a", "output", "target"),
    "text": ("text", "content", "body", "document", "sample"),
    "messages": ("messages", "conversation", "conversations", "dialog", "dialogue", "chat", "turns"),
    "chosen": ("chosen", "preferred", "accepted", "good", "better", "winner"),
    "rejected": ("rejected", "dispreferred", "nonpreferred", "bad", "worse", "loser"),
    "input": ("input",),
    "preferred_output": ("preferredoutput",),
    "non_preferred_output": ("nonpreferredoutput",),
}
_NOT_A_WORD = re.compile(r"[^0-9a-z]+")

# The seed course's single-text format, and Alpaca's: a text row holding both sides of the exchange.
_TEXT_MARKERS = (
    re.compile(r"^\s*###\s*Question:\s*(?P<user>.*?)\s*###\s*Answer:\s*(?P<assistant>.*)$", re.S),
    re.compile(r"^\s*###\s*Instruction:\s*(?P<user>.*?)\s*###\s*Response:\s*(?P<assistant>.*)$", re.S),
)


class SchemaNotDetected(InvalidArgument):
    """No schema fits the columns. Carries the field mapping that would (when one can be guessed), also as
    trailing metadata so that a client can print the exact command to run."""

    METADATA_KEY = "suggested-field-mapping"

    def __init__(self, message: str, *, field: str, suggestion: dict[str, str]) -> None:
        super().__init__(message, field=field)
        self.suggestion = suggestion

    def trailing_metadata(self) -> tuple[tuple[str, str], ...]:
        extra = ((self.METADATA_KEY, json.dumps(self.suggestion)),) if self.suggestion else ()
        return super().trailing_metadata() + extra


def map_flags(mapping: dict[str, str]) -> str:
    return " ".join(f"--map {shlex.quote(f'{ours}={theirs}')}" for ours, theirs in mapping.items())


@dataclass(frozen=True)
class FieldPlan:
    """Which schema a file has and which of its columns holds each of our fields."""

    schema: Schema
    columns: dict[str, str]  # our field -> the file's column


def plan_fields(requested: Schema | None, mapping: dict[str, str], columns: list[str]) -> FieldPlan:
    for ours, theirs in mapping.items():
        if ours not in KNOWN_FIELDS:
            raise InvalidArgument(
                f"'{ours}' is not a field of any schema; known fields: {', '.join(KNOWN_FIELDS)}",
                field=f"field_mapping.{ours}",
            )
        if theirs not in columns:
            raise InvalidArgument(
                f"column '{theirs}' is not in the file; its columns are: {', '.join(columns) or 'none'}",
                field=f"field_mapping.{ours}",
            )

    def available(name: str) -> str | None:
        if name in mapping:
            return mapping[name]
        return name if name in columns else None

    candidates = [requested] if requested else list(REQUIRED_FIELDS)
    if not requested and any(available(name) for name in _PREFERENCE_MARKERS):
        candidates = list(PREFERENCE_SCHEMAS)
    for schema in candidates:
        if all(available(name) for name in REQUIRED_FIELDS[schema]):
            fields = REQUIRED_FIELDS[schema] + OPTIONAL_FIELDS.get(schema, ())
            plan = FieldPlan(schema, {name: column for name in fields if (column := available(name))})
            if schema == Schema.PREFERENCE and not {"prompt", "messages"} & set(plan.columns):
                raise InvalidArgument(
                    "the preference schema needs a 'prompt' column (a string) or a 'messages' column (the "
                    f"conversation before the answers); the file's columns are: {', '.join(columns)}",
                    field="prompt",
                )
            return plan
    # Name the missing columns of the schema a mapping was found for, or else of the closest one.
    suggested_schema, suggestion = suggest_mapping(candidates, mapping, columns)
    closest = suggested_schema or _by_closeness(candidates, available)[0]
    missing = [name for name in REQUIRED_FIELDS[closest] if not available(name)]
    advice = (
        f"this field mapping would work: {map_flags(suggestion)}"
        if suggestion
        else f"name the columns with a field mapping ({' '.join(f'--map {m}=COLUMN' for m in missing)})"
    )
    raise SchemaNotDetected(
        f"the file has no column{'s' if len(missing) > 1 else ''} {', '.join(repr(m) for m in missing)} "
        "needed by the "
        f"{closest.name.lower()} schema (its columns are: {', '.join(columns) or 'none'}); {advice}",
        field="schema" if requested else missing[0],
        suggestion=suggestion,
    )


def _by_closeness(candidates: list[Schema], available: Callable[[str], str | None]) -> list[Schema]:
    """Most required fields present first; ties in the order users most often mean."""
    return sorted(
        candidates,
        key=lambda s: (-sum(1 for n in REQUIRED_FIELDS[s] if available(n)), _SUGGESTION_ORDER.index(s)),
    )


def suggest_mapping(
    candidates: list[Schema], mapping: dict[str, str], columns: list[str]
) -> tuple[Schema | None, dict[str, str]]:
    """The schema and whole field mapping (the one given plus the missing fields) of the closest schema
    whose required fields all find a column by a usual name; for a file of exactly two columns, question
    and answer in their order. (None, {}) when nothing fits."""
    by_word = {_NOT_A_WORD.sub("", column.lower()): column for column in reversed(columns)}

    def available(name: str) -> str | None:
        return mapping.get(name) or (name if name in columns else None)

    for schema in _by_closeness(candidates, available):
        chosen = dict(mapping)
        for name in REQUIRED_FIELDS[schema]:
            if name in chosen or name in columns:
                continue
            taken = set(chosen.values()) | set(REQUIRED_FIELDS[schema])
            column = next(
                (by_word[w] for w in _USUAL_COLUMNS[name] if w in by_word and by_word[w] not in taken), None
            )
            if column is None:
                break
            chosen[name] = column
        else:
            return schema, chosen
    if Schema.QUESTION_ANSWER in candidates and len(columns) == 2 and not mapping:
        return Schema.QUESTION_ANSWER, {"question": columns[0], "answer": columns[1]}
    return None, {}


def to_conversation(record: RawRecord, plan: FieldPlan) -> Conversation | Rejection:
    """The row as a conversation, or the first reason it cannot be one."""
    if record.error:
        return Rejection(record.line, record.error)
    row: dict[str, Any] = record.value
    if plan.schema in PREFERENCE_SCHEMAS:
        return _preference_pair(record.line, row, plan)
    if plan.schema == Schema.MESSAGES:
        return _from_messages(record.line, row, plan.columns["messages"])
    values: dict[str, str] = {}
    for name, column in plan.columns.items():
        value = row.get(column)
        optional = name in OPTIONAL_FIELDS.get(plan.schema, ())
        if value is None and optional:
            continue
        if value is None:
            return Rejection(record.line, "missing field", column)
        if not isinstance(value, str):
            return Rejection(record.line, f"non-string field (got {type(value).__name__})", column)
        values[name] = value.strip()
    columns = plan.columns
    if plan.schema == Schema.QUESTION_ANSWER:
        pairs = [("user", "question"), ("assistant", "answer")]
    elif plan.schema == Schema.PROMPT_COMPLETION:
        pairs = [("user", "prompt"), ("assistant", "completion")]
    elif plan.schema == Schema.ALPACA:
        if values.get("input"):
            values["instruction"] = f"{values['instruction']}\n\n{values['input']}"
        pairs = [("user", "instruction"), ("assistant", "output")]
    else:
        return _from_text(record.line, values["text"], columns["text"])
    return Conversation(
        record.line,
        [{"role": role, "content": values[name]} for role, name in pairs],
        [columns[name] for _, name in pairs],
    )


def _from_text(line: int, text: str, column: str) -> Conversation | Rejection:
    for pattern in _TEXT_MARKERS:
        if match := pattern.match(text):
            return Conversation(
                line,
                [
                    {"role": "user", "content": match["user"].strip()},
                    {"role": "assistant", "content": match["assistant"].strip()},
                ],
                [column, column],
            )
    return Rejection(
        line,
        "a text row needs '### Question:' and '### Answer:' (or '### Instruction:' and '### Response:') "
        "markers to tell the prompt from the answer",
        column,
    )


# Function calling is not trained yet: such rows are refused by name rather than trained without their tools.
_TOOL_FIELDS = ("tools", "functions", "parallel_tool_calls")
_TOOL_MESSAGE_FIELDS = ("tool_calls", "function_call")


def _from_messages(line: int, row: dict[str, Any], column: str) -> Conversation | Rejection:
    for name in _TOOL_FIELDS:
        if row.get(name):
            return Rejection(line, "tool and function definitions are not supported for training yet", name)
    value = row.get(column)
    if value is None:
        return Rejection(line, "missing field", column)
    if not isinstance(value, list) or not value:
        return Rejection(line, "non-list field: messages must be a non-empty list of {role, content}", column)
    messages, fields = [], []
    for index, message in enumerate(value):
        where = f"{column}[{index}]"
        if not isinstance(message, dict):
            return Rejection(line, f"non-object message (got {type(message).__name__})", where)
        for key in ("role", "content"):
            if message.get(key) is None:
                return Rejection(line, "missing field", f"{where}.{key}")
            if not isinstance(message[key], str):
                return Rejection(
                    line, f"non-string field (got {type(message[key]).__name__})", f"{where}.{key}"
                )
        for name in _TOOL_MESSAGE_FIELDS:
            if message.get(name):
                return Rejection(
                    line, "tool and function calls are not supported for training yet", f"{where}.{name}"
                )
        converted = {"role": message["role"].strip().lower(), "content": message["content"].strip()}
        if "weight" in message:
            # OpenAI's per-message weight: 0 keeps an assistant turn as context without training on it.
            if message["weight"] not in (0, 1) or isinstance(message["weight"], bool):
                return Rejection(
                    line, f"weight must be 0 or 1 (got {message['weight']!r})", f"{where}.weight"
                )
            if converted["role"] != "assistant":
                return Rejection(line, "weight is only allowed on assistant messages", f"{where}.weight")
            if message["weight"] == 0:
                converted["weight"] = 0
        messages.append(converted)
        fields.append(f"{where}.content")
    if all(m.get("weight") == 0 for m in messages if m["role"] == "assistant") and any(
        m["role"] == "assistant" for m in messages
    ):
        return Rejection(line, "every assistant message has weight 0: nothing to train on", f"{column}")
    return Conversation(line, messages, fields)


def _preference_pair(line: int, row: dict[str, Any], plan: FieldPlan) -> Conversation | Rejection:
    """The prompt with the chosen answer as its last message, and the rejected answer beside it."""
    columns = plan.columns
    if plan.schema == Schema.OPENAI_PREFERENCE:
        prompt = _openai_input(line, row, columns["input"])
        chosen_column, rejected_column = columns["preferred_output"], columns["non_preferred_output"]
    else:
        prompt = _preference_prompt(line, row, columns)
        chosen_column, rejected_column = columns["chosen"], columns["rejected"]
    if isinstance(prompt, Rejection):
        return prompt
    if prompt.messages[-1]["role"] != "user":
        return Rejection(line, "the prompt's last message must be the user's", prompt.fields[-1])
    answers = []
    for name, column in (("chosen", chosen_column), ("rejected", rejected_column)):
        answer = _answer(line, row, column)
        if isinstance(answer, Rejection):
            return answer
        if not answer[0]:
            return Rejection(line, f"empty {name} answer", answer[1])
        answers.append(answer)
    (chosen, chosen_field), (rejected, rejected_field) = answers
    if chosen == rejected:
        return Rejection(
            line, "chosen and rejected are the same answer: the pair teaches nothing", rejected_field
        )
    return Conversation(
        line,
        [*prompt.messages, {"role": "assistant", "content": chosen}],
        [*prompt.fields, chosen_field],
        rejected=rejected,
    )


def _preference_prompt(line: int, row: dict[str, Any], columns: dict[str, str]) -> Conversation | Rejection:
    has_messages = "messages" in columns and row.get(columns["messages"]) is not None
    has_prompt = "prompt" in columns and row.get(columns["prompt"]) is not None
    if has_messages and has_prompt:
        return Rejection(line, "give the prompt as prompt or as messages, not both", columns["prompt"])
    if has_messages:
        return _from_messages(line, row, columns["messages"])
    column = columns.get("prompt") or columns["messages"]
    value = row.get(column)
    if value is None:
        return Rejection(line, "missing field", column)
    if not isinstance(value, str):
        return Rejection(line, f"non-string field (got {type(value).__name__})", column)
    if not value.strip():
        return Rejection(line, "empty question", column)
    return Conversation(line, [{"role": "user", "content": value.strip()}], [column])


def _openai_input(line: int, row: dict[str, Any], column: str) -> Conversation | Rejection:
    """OpenAI's `input`: {"messages": [...], "tools": [...]}; fields are named under the column."""
    value = row.get(column)
    if value is None:
        return Rejection(line, "missing field", column)
    if not isinstance(value, dict):
        return Rejection(line, f"non-object field (got {type(value).__name__})", column)
    if not value.get("tools"):
        # OpenAI's own DPO example sends parallel_tool_calls: true beside an empty tool list; without tools
        # it means nothing.
        value = {k: v for k, v in value.items() if k != "parallel_tool_calls"}
    prompt = _from_messages(line, value, "messages")
    if isinstance(prompt, Rejection):
        return replace(prompt, field=f"{column}.{prompt.field}")
    prompt.fields = [f"{column}.{name}" for name in prompt.fields]
    return prompt


def _answer(line: int, row: dict[str, Any], column: str) -> tuple[str, str] | Rejection:
    """(the answer's text, its field): a string, or OpenAI's and TRL's list of one assistant message."""
    value = row.get(column)
    if value is None:
        return Rejection(line, "missing field", column)
    if isinstance(value, str):
        return value.strip(), column
    if not isinstance(value, list) or len(value) != 1 or not isinstance(value[0], dict):
        return Rejection(line, "must be a string or a list of exactly one assistant message", column)
    message = value[0]
    if message.get("role") != "assistant":
        return Rejection(line, f"must be the assistant's message (got role {message.get('role')!r})", column)
    if not isinstance(message.get("content"), str):
        return Rejection(
            line,
            "missing field" if message.get("content") is None else "non-string field",
            f"{column}[0].content",
        )
    return message["content"].strip(), f"{column}[0].content"

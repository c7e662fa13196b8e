"""Schemas: which fields hold the conversation, detected from the columns or given by a field mapping,
and the conversion of one raw row into a conversation (or the reason it cannot be one)."""

import enum
import re
from dataclasses import dataclass
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


REQUIRED_FIELDS: dict[Schema, tuple[str, ...]] = {
    Schema.MESSAGES: ("messages",),
    Schema.ALPACA: ("instruction", "output"),
    Schema.PROMPT_COMPLETION: ("prompt", "completion"),
    Schema.QUESTION_ANSWER: ("question", "answer"),
    Schema.TEXT: ("text",),
}
OPTIONAL_FIELDS: dict[Schema, tuple[str, ...]] = {Schema.ALPACA: ("input",)}
KNOWN_FIELDS = sorted(
    {f for fields in (*REQUIRED_FIELDS.values(), *OPTIONAL_FIELDS.values()) for f in fields}
)

# The seed course's single-text format, and Alpaca's: a text row holding both sides of the exchange.
_TEXT_MARKERS = (
    re.compile(r"^\s*###\s*Question:\s*(?P<user>.*?)\s*###\s*Answer:\s*(?P<assistant>.*)$", re.S),
    re.compile(r"^\s*###\s*Instruction:\s*(?P<user>.*?)\s*###\s*Response:\s*(?P<assistant>.*)$", re.S),
)


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
    for schema in candidates:
        if all(available(name) for name in REQUIRED_FIELDS[schema]):
            fields = REQUIRED_FIELDS[schema] + OPTIONAL_FIELDS.get(schema, ())
            return FieldPlan(schema, {name: column for name in fields if (column := available(name))})
    # Name the missing columns of the schema the file comes closest to.
    closest = max(candidates, key=lambda s: sum(1 for n in REQUIRED_FIELDS[s] if available(n)))
    missing = [name for name in REQUIRED_FIELDS[closest] if not available(name)]
    raise InvalidArgument(
        f"the file has no column {', '.join(repr(m) for m in missing)} needed by the "
        f"{closest.name.lower()} schema (its columns are: {', '.join(columns) or 'none'}); "
        "name the columns with a field mapping",
        field="schema" if requested else missing[0],
    )


def to_conversation(record: RawRecord, plan: FieldPlan) -> Conversation | Rejection:
    """The row as a conversation, or the first reason it cannot be one."""
    if record.error:
        return Rejection(record.line, record.error)
    row: dict[str, Any] = record.value
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


def _from_messages(line: int, row: dict[str, Any], column: str) -> Conversation | Rejection:
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
        messages.append({"role": message["role"].strip().lower(), "content": message["content"].strip()})
        fields.append(f"{where}.content")
    return Conversation(line, messages, fields)

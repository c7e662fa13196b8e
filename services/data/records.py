"""The records ingestion passes between its steps: raw rows, conversations and rejections."""

from dataclasses import dataclass, field
from typing import Any

# role and content, and "weight": 0 on an assistant turn kept as context but not trained on.
Message = dict[str, Any]
# A raw row's column naming the fact the row states (GenerateDataset writes it): rows sharing one are
# phrasings of one fact, which prepare can split between train and test (ftcommon/specs/prepare.py split_by).
FACT_ID_FIELD = "fact_id"


@dataclass(frozen=True)
class RawRecord:
    """One row as read from the file: a parsed value, or the reason it could not be parsed."""

    line: int  # 1-based line (JSONL, CSV) or element index (JSON array, Parquet)
    value: Any = None
    error: str = ""


@dataclass(frozen=True)
class Rejection:
    line: int
    reason: str
    field: str = ""


@dataclass
class Conversation:
    line: int
    messages: list[Message]
    # The file's field each message came from, so reports name what the user wrote ("answer", "output").
    fields: list[str] = field(default_factory=list)
    is_refusal: bool = False
    # A preference pair's rejected answer to the same prompt; the chosen answer is the last message.
    rejected: str | None = None
    fact_id: str = ""  # empty: the row names no fact

    def to_json(self) -> dict[str, Any]:
        value = {"source_line": self.line, "messages": self.messages, "is_refusal": self.is_refusal}
        # Only when present, so the stored rows (and ids) of data sets without them stay as they were.
        if self.fact_id:
            value[FACT_ID_FIELD] = self.fact_id
        return value if self.rejected is None else {**value, "rejected": self.rejected}

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> "Conversation":
        return cls(
            line=int(value["source_line"]),
            messages=[
                {
                    "role": m["role"],
                    "content": m["content"],
                    **({"weight": 0} if m.get("weight") == 0 else {}),
                }
                for m in value["messages"]
            ],
            is_refusal=bool(value.get("is_refusal", False)),
            rejected=value.get("rejected"),
            fact_id=str(value.get(FACT_ID_FIELD, "")),
        )

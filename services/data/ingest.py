"""Ingestion: raw bytes -> kept conversations and a validation report, or InvalidArgument for the file.

Pure: nothing is stored here, so a rejected file leaves nothing behind (storage happens in catalog.py,
only once the file is accepted).
"""

from dataclasses import asdict, dataclass, field
from typing import Any

from ftcommon.errors import InvalidArgument
from services.data.duplicates import DuplicateGroup, find_duplicates
from services.data.formats import FileFormat, detect_format, read_records
from services.data.pii import PiiAllowList, PiiFinding, scan_conversations
from services.data.records import FACT_ID_FIELD, Conversation, Rejection
from services.data.schemas import Schema, plan_fields, to_conversation
from services.data.validation import check_conversation, is_empty_field_rejection

# How many rejections an error message quotes before saying "and N more".
_QUOTED_REJECTIONS = 3


@dataclass(frozen=True)
class IngestOptions:
    filename: str = ""
    file_format: FileFormat | None = None
    schema: Schema | None = None
    field_mapping: dict[str, str] = field(default_factory=dict)
    strict: bool = False
    redact_pii: bool = False
    encoding: str = ""  # empty: utf-8
    pii_allow: tuple[str, ...] = ()


@dataclass
class IngestResult:
    file_format: FileFormat
    schema: Schema
    kept: list[Conversation]
    rejected: list[Rejection]
    duplicates: list[DuplicateGroup]
    pii: list[PiiFinding]
    counts: dict[str, int]

    def report(self) -> dict[str, Any]:
        """The validation report as stored with the dataset (JSON)."""
        return {
            "schema": int(self.schema),
            "format": int(self.file_format),
            "counts": self.counts,
            "rejected": [asdict(r) for r in self.rejected],
            "duplicates": [asdict(d) for d in self.duplicates],
            "pii": [asdict(p) for p in self.pii],
        }


def ingest(data: bytes, options: IngestOptions, max_row_bytes: int, near_threshold: float) -> IngestResult:
    allow = PiiAllowList.parse(options.pii_allow, "pii_allow")
    file_format = detect_format(data, options.filename, options.file_format)
    records, columns = read_records(data, file_format, max_row_bytes, options.encoding)
    if not records:
        raise InvalidArgument("the file has no rows", field="file")
    if all(record.error for record in records):
        # No row could be read, so there are no columns to detect a schema from: the rows' errors say why.
        unreadable = [Rejection(record.line, record.error) for record in records]
        raise InvalidArgument(f"no valid rows: {_quote(unreadable)}", row=unreadable[0].line)
    plan = plan_fields(options.schema, options.field_mapping, columns)
    kept: list[Conversation] = []
    rejected: list[Rejection] = []
    for record in records:
        outcome = to_conversation(record, plan)
        if isinstance(outcome, Conversation):
            outcome = check_conversation(outcome) or outcome
        if isinstance(outcome, Conversation):
            outcome.fact_id = _fact_id(record.value)
        (kept if isinstance(outcome, Conversation) else rejected).append(outcome)
    if not kept:
        raise InvalidArgument(
            f"no valid rows: {_quote(rejected)}", field=rejected[0].field, row=rejected[0].line
        )
    if options.strict and rejected:
        raise InvalidArgument(
            f"strict mode rejects the file: {_quote(rejected)}", field=rejected[0].field, row=rejected[0].line
        )
    pii = [
        finding for found in scan_conversations(kept, options.redact_pii, allow).values() for finding in found
    ]
    duplicates = find_duplicates(kept, near_threshold)
    counts = {
        "rows_total": len(records),
        "rows_kept": len(kept),
        "rows_rejected": len(rejected),
        "exact_duplicates": sum(len(g.lines) - 1 for g in duplicates if g.exact),
        "near_duplicates": sum(len(g.lines) - 1 for g in duplicates if not g.exact),
        "pii_found": sum(1 for p in pii if not p.allowed),
        "pii_allowed": sum(1 for p in pii if p.allowed),
        "empty_fields": sum(1 for r in rejected if is_empty_field_rejection(r)),
    }
    return IngestResult(file_format, plan.schema, kept, rejected, duplicates, pii, counts)


def _fact_id(row: Any) -> str:
    """The row's fact id as text (a number is a fine id too); empty when the row names none."""
    value = row.get(FACT_ID_FIELD) if isinstance(row, dict) else None
    return "" if value is None else str(value).strip()


def _quote(rejected: list[Rejection]) -> str:
    quoted = "; ".join(
        f"line {r.line}: {r.reason}" + (f" (field '{r.field}')" if r.field else "")
        for r in rejected[:_QUOTED_REJECTIONS]
    )
    more = len(rejected) - _QUOTED_REJECTIONS
    return quoted + (f"; and {more} more" if more > 0 else "")

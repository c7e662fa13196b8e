"""Secrets and personal data in free text: emails, phone numbers and API keys, found and optionally redacted."""

import re
from dataclasses import dataclass

from services.data.records import Conversation

# Order matters when spans overlap: keys first (an AKIA key is also a run of capitals), then emails.
PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    (
        "api_key",
        re.compile(
            r"\b(?:sk-(?:proj-|live-|test-)?[A-Za-z0-9_-]{20,}"
            r"|AKIA[0-9A-Z]{16}"
            r"|gh[pousr]_[A-Za-z0-9]{36,}"
            r"|xox[abprs]-[A-Za-z0-9-]{10,}"
            r"|AIza[0-9A-Za-z_-]{35})"
        ),
    ),
    ("email", re.compile(r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}\b")),
    # Separators are required between groups, so long numbers (ids, counts, versions) are not phones.
    (
        "phone",
        re.compile(
            r"(?<!\w)(?<!\d\.)(?:\+\d{1,3}[ .-]?)?(?:\(\d{2,4}\)[ .-]?|\d{2,4}[ .-])\d{3,4}[ .-]\d{3,4}(?!\w|\.\d)"
        ),
    ),
)
PLACEHOLDERS = {"api_key": "[API_KEY]", "email": "[EMAIL]", "phone": "[PHONE]"}


@dataclass(frozen=True)
class PiiFinding:
    line: int
    kind: str
    field: str
    redacted: bool


def scan_text(text: str) -> list[tuple[str, int, int]]:
    """(kind, start, end) of every finding, non-overlapping, in text order."""
    spans: list[tuple[str, int, int]] = []
    for kind, pattern in PATTERNS:
        for match in pattern.finditer(text):
            if not any(start < match.end() and match.start() < end for _, start, end in spans):
                spans.append((kind, match.start(), match.end()))
    return sorted(spans, key=lambda span: span[1])


def redact_text(text: str, spans: list[tuple[str, int, int]]) -> str:
    for kind, start, end in reversed(spans):
        text = text[:start] + PLACEHOLDERS[kind] + text[end:]
    return text


def scan_conversation(conversation: Conversation, redact: bool) -> list[PiiFinding]:
    """Findings in every message; with `redact`, the messages are rewritten in place."""
    findings = []
    for index, message in enumerate(conversation.messages):
        spans = scan_text(message["content"])
        if not spans:
            continue
        field = conversation.fields[index] if index < len(conversation.fields) else f"messages[{index}]"
        findings.extend(PiiFinding(conversation.line, kind, field, redact) for kind, _, _ in spans)
        if redact:
            message["content"] = redact_text(message["content"], spans)
    return findings

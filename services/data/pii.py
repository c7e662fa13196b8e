"""Secrets and personal data in free text: emails, phone numbers and API keys, found and optionally redacted.

An allow-list names what the model should learn (a company's own domain, its help-desk address or
switchboard number): such findings are reported as allowed and never redacted.
"""

import re
from bisect import bisect_right
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy

from ftcommon.errors import InvalidArgument
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
# What a text must contain for each pattern to match, tested first: most rows hold no PII, and these tests
# scan a text 2-5x faster than the patterns themselves (100,000 lamini_docs rows: 3.9 s -> 1.1 s).
_KEY_PREFIXES = ("sk-", "AKIA", "xox", "AIza")
# Spelled out rather than \d{3}: the regex engine finds this form about 1.5x faster.
_PHONE_CORE = re.compile(r"\d\d\d[ .-]\d\d\d")
MAY_CONTAIN: dict[str, Callable[[str], bool]] = {
    "api_key": lambda text: any(p in text for p in _KEY_PREFIXES) or ("gh" in text and "_" in text),
    "email": lambda text: "@" in text,
    "phone": lambda text: _PHONE_CORE.search(text) is not None,
}


def _may_contain_any(text: str) -> bool:
    """Whether a text may hold any finding at all, for the many texts that hold none: the tests above
    (substring tests at memory speed and one digit search) rather than one regex of every alternative
    (200,000 lamini_docs texts: 0.7-0.8 s instead of 1.4 s)."""
    return any(may_contain(text) for may_contain in MAY_CONTAIN.values())


_DOMAIN = re.compile(r"^[a-z0-9-]+(?:\.[a-z0-9-]+)+$")
_PHONE_ENTRY = re.compile(r"^\+?[\d\s().-]+$")
_MIN_PHONE_DIGITS = 6
# How many rows a strict-mode refusal quotes before saying "and N more".
_QUOTED_ROWS = 5
# How many source lines a split's PII counts list.
_LISTED_LINES = 100
# Where a finding in a preference pair's rejected answer is reported (the file's column is not kept).
REJECTED_FIELD = "rejected"


@dataclass(frozen=True)
class PiiFinding:
    line: int
    kind: str
    field: str
    redacted: bool
    allowed: bool = False


@dataclass(frozen=True)
class PiiAllowList:
    """Email domains (their subdomains too), exact addresses and phone numbers (compared by digits)."""

    domains: frozenset[str] = frozenset()
    addresses: frozenset[str] = frozenset()
    phone_digits: frozenset[str] = frozenset()

    @classmethod
    def parse(cls, entries: Sequence[str], field: str) -> "PiiAllowList":
        """InvalidArgument naming `field[i]` for an entry that is neither a domain, an address nor a phone."""
        domains, addresses, phones = set(), set(), set()
        for index, raw in enumerate(entries):
            entry = raw.strip().lower()
            digits = _digits(entry)
            if "@" in entry.strip("@"):
                addresses.add(entry)
            elif _DOMAIN.match(entry.lstrip("@")):
                domains.add(entry.lstrip("@"))
            elif _PHONE_ENTRY.match(entry) and len(digits) >= _MIN_PHONE_DIGITS:
                phones.add(digits)
            else:
                raise InvalidArgument(
                    f"'{raw}' is not an email domain (company.internal), an address (print@company.internal) "
                    "or a phone number",
                    field=f"{field}[{index}]",
                )
        return cls(frozenset(domains), frozenset(addresses), frozenset(phones))

    def allows(self, kind: str, text: str) -> bool:
        if kind == "email":
            address = text.lower()
            domain = address.rpartition("@")[2]
            return address in self.addresses or any(
                domain == allowed or domain.endswith("." + allowed) for allowed in self.domains
            )
        # A key is a secret whoever owns it: no allow-list entry keeps one.
        return kind == "phone" and _digits(text) in self.phone_digits


def _digits(text: str) -> str:
    return "".join(c for c in text if c.isdigit())


def scan_text(text: str) -> list[tuple[str, int, int]]:
    """(kind, start, end) of every finding, non-overlapping, in text order."""
    if not _may_contain_any(text):
        return []
    spans: list[tuple[str, int, int]] = []
    for kind, pattern in PATTERNS:
        if not MAY_CONTAIN[kind](text):
            continue
        for match in pattern.finditer(text):
            if not any(start < match.end() and match.start() < end for _, start, end in spans):
                spans.append((kind, match.start(), match.end()))
    return sorted(spans, key=lambda span: span[1])


def redact_text(text: str, spans: list[tuple[str, int, int]]) -> str:
    for kind, start, end in reversed(spans):
        text = text[:start] + PLACEHOLDERS[kind] + text[end:]
    return text


def scan_conversation(
    conversation: Conversation, redact: bool, allow: PiiAllowList = PiiAllowList()
) -> list[PiiFinding]:
    """Findings in every message (and a preference pair's rejected answer, which is trained on too); with
    `redact`, the texts are rewritten in place (allowed spans stay)."""
    # Most rows hold nothing: one test of all their texts at once, joined by a character no finding and no
    # prefilter substring contains, so a match cannot span two texts (300,000 calls become 100,000).
    if not _may_contain_any("\0".join(_contents(conversation))):
        return []
    findings = []
    for index, message in enumerate(conversation.messages):
        found, message["content"] = _scan(
            conversation.line, message["content"], _field_of(conversation, index), redact, allow
        )
        findings.extend(found)
    if conversation.rejected:
        found, conversation.rejected = _scan(
            conversation.line, conversation.rejected, REJECTED_FIELD, redact, allow
        )
        findings.extend(found)
    return findings


def scan_conversations(
    conversations: Sequence[Conversation], redact: bool, allow: PiiAllowList = PiiAllowList()
) -> dict[int, list[PiiFinding]]:
    """scan_conversation of every row that has findings, by its index, with the prefilter run once over all
    the rows' texts (`rows_that_may_contain`): a prepare's 100,000 lamini_docs rows in 0.6 s instead of
    0.85 s, where it is one-core work before the first batch is encoded. A row the prefilter lets through
    for texts that pass only together (a "gh" in one, a "_" in another) has nothing found, as alone."""
    texts = [message["content"] for conversation in conversations for message in conversation.messages]
    owners = [index for index, conversation in enumerate(conversations) for _ in conversation.messages]
    for index, conversation in enumerate(conversations):
        if conversation.rejected:
            texts.append(conversation.rejected)
            owners.append(index)
    findings = {}
    for index in sorted({owners[text] for text in rows_that_may_contain(texts)}):
        if found := scan_conversation(conversations[index], redact, allow):
            findings[index] = found
    return findings


# The prefilter over many texts at once searches their UTF-8 bytes, where an ASCII byte is always that
# character, so the substring tests are exact there, and ASCII digits can be mapped to one digit by a table
# (bytes.translate) for the phone test; str patterns' \d matches every Unicode digit, so texts with other
# characters are given the phone test one by one too.
_DIGITS_TO_ZERO = bytes.maketrans(b"0123456789", b"0" * 10)
_PHONE_CORE_OF_ZEROS = re.compile(rb"000[ .-]000")
# Joins the texts: no prefilter substring or match holds it, so none spans two texts.
_TEXT_SEPARATOR = "\x01"


def rows_that_may_contain(texts: Sequence[str]) -> list[int]:
    """The indices of the texts `_may_contain_any` is true of, in order, found by searching all of them
    joined: one substring search per prefix and one digit search instead of six calls per text."""
    data = _TEXT_SEPARATOR.join(texts).encode("utf-8", "surrogatepass")
    separators = numpy.flatnonzero(numpy.frombuffer(data, dtype=numpy.uint8) == ord(_TEXT_SEPARATOR))
    if len(separators) != max(len(texts) - 1, 0):  # a text holds the separator itself
        return [index for index, text in enumerate(texts) if _may_contain_any(text)]
    starts = [0, *(separators + 1).tolist()]

    def row_of(position: int) -> int:
        return bisect_right(starts, position) - 1

    def rows_holding(needle: bytes) -> set[int]:
        rows, position = set(), data.find(needle)
        while position != -1:
            row = row_of(position)
            rows.add(row)
            # On from the next text: one hit is enough for a text.
            position = data.find(needle, starts[row + 1]) if row + 1 < len(starts) else -1
        return rows

    found = rows_holding(b"@")
    for prefix in _KEY_PREFIXES:
        found |= rows_holding(prefix.encode())
    found |= {row for row in rows_holding(b"_") if "gh" in texts[row]}
    found |= {
        row_of(match.start()) for match in _PHONE_CORE_OF_ZEROS.finditer(data.translate(_DIGITS_TO_ZERO))
    }
    found |= {i for i, text in enumerate(texts) if not text.isascii() and _PHONE_CORE.search(text)}
    return sorted(found)


def _contents(conversation: Conversation) -> list[str]:
    contents = [message["content"] for message in conversation.messages]
    return [*contents, conversation.rejected] if conversation.rejected else contents


def _scan(
    line: int, text: str, field: str, redact: bool, allow: PiiAllowList
) -> tuple[list[PiiFinding], str]:
    """One text's findings, and the text (redacted but for allowed spans when `redact`)."""
    spans = scan_text(text)
    if not spans:
        return [], text
    allowed = [allow.allows(kind, text[start:end]) for kind, start, end in spans]
    findings = [
        PiiFinding(line, kind, field, redact and not ok, ok)
        for (kind, _, _), ok in zip(spans, allowed, strict=True)
    ]
    if redact and spans:
        text = redact_text(text, [s for s, ok in zip(spans, allowed, strict=True) if not ok])
    return findings, text


def _texts(conversation: Conversation) -> list[tuple[str, str]]:
    """(field, text) of everything a row trains on."""
    texts = [(_field_of(conversation, i), m["content"]) for i, m in enumerate(conversation.messages)]
    return texts + ([(REJECTED_FIELD, conversation.rejected)] if conversation.rejected else [])


def _field_of(conversation: Conversation, index: int) -> str:
    """The file's field a message came from; in prepared data (fields are not stored) its position and role."""
    if index < len(conversation.fields):
        return conversation.fields[index]
    return f"messages[{index}] ({conversation.messages[index]['role']})"


def refuse_remaining_pii(conversations: Sequence[Conversation], allow: PiiAllowList) -> None:
    """Strict mode: InvalidArgument naming the rows, fields and kinds of PII that is neither allowed nor
    redacted (the conversations are scanned, not changed)."""
    rows: list[tuple[int, list[str]]] = []
    kinds: dict[str, int] = {}
    for conversation in conversations:
        described = []
        for field, text in _texts(conversation):
            for kind, start, end in scan_text(text):
                if allow.allows(kind, text[start:end]):
                    continue
                kinds[kind] = kinds.get(kind, 0) + 1
                # An email's domain is what an allow-list entry would name; the address stays out of logs.
                what = f"email at {text[start:end].rpartition('@')[2]}" if kind == "email" else kind
                described.append(f"{what} in {field}")
        if described:
            rows.append((conversation.line, described))
    if not rows:
        return
    quoted = "; ".join(f"line {line}: {', '.join(sorted(set(found)))}" for line, found in rows[:_QUOTED_ROWS])
    more = f"; and {len(rows) - _QUOTED_ROWS} more rows" if len(rows) > _QUOTED_ROWS else ""
    raise InvalidArgument(
        f"strict PII mode refuses to prepare: PII left in {len(rows)} row{'s' if len(rows) > 1 else ''} "
        f"({', '.join(f'{count} {kind}' for kind, count in sorted(kinds.items()))}): {quoted}{more}; "
        "redact it (--redact-pii) or allow what the model should learn (--pii-allow DOMAIN)",
        field="pii.strict",
        row=rows[0][0],
    )


def pii_counts(rows: Sequence[tuple[int, list[PiiFinding]]]) -> dict[str, Any]:
    """One split's PII from its rows' (source line, findings): the rows and findings left (by kind, with
    the first lines), and the findings redacted or kept by the allow-list."""
    left = [(line, [f for f in findings if not f.redacted and not f.allowed]) for line, findings in rows]
    left = [(line, findings) for line, findings in left if findings]
    kinds: dict[str, int] = {}
    for _, findings in left:
        for finding in findings:
            kinds[finding.kind] = kinds.get(finding.kind, 0) + 1
    every = [finding for _, findings in rows for finding in findings]
    return {
        "rows": len(left),
        "findings": sum(kinds.values()),
        "kinds": kinds,
        "lines": [line for line, _ in left[:_LISTED_LINES]],
        "redacted": sum(1 for f in every if f.redacted),
        "allowed": sum(1 for f in every if f.allowed),
    }

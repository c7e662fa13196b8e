"""File formats: detect JSONL, JSON array, CSV or Parquet from the bytes, and read them into raw rows.

Reading never trusts the file name alone: a Parquet file renamed `.jsonl` is caught by its magic bytes
and named as such, because the user would otherwise see a wall of "bad JSON" rows. Between CSV and JSON
the name decides first, since a CSV header may well start with "[" or "{".
"""

import codecs
import csv
import enum
import io
import itertools
import json
from pathlib import PurePosixPath
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from ftcommon.errors import InvalidArgument
from services.data.records import RawRecord

PARQUET_MAGIC = b"PAR1"
UTF8_BOM = b"\xef\xbb\xbf"
DEFAULT_ENCODING = "utf-8"
# Excel writes ";" where the decimal separator is a comma, and "Unicode text" exports use tabs.
CSV_DELIMITERS = (",", ";", "\t")
_SNIFFED_CSV_ROWS = 50


class FileFormat(enum.IntEnum):
    # Values equal finetune.v1.DatasetFormat.
    JSONL = 1
    JSON = 2
    CSV = 3
    PARQUET = 4


EXTENSIONS = {
    ".jsonl": FileFormat.JSONL,
    ".ndjson": FileFormat.JSONL,
    ".json": FileFormat.JSON,
    ".csv": FileFormat.CSV,
    ".parquet": FileFormat.PARQUET,
    ".pq": FileFormat.PARQUET,
}


def detect_format(data: bytes, filename: str, requested: FileFormat | None) -> FileFormat:
    """The file's real format; InvalidArgument when the name or request contradicts the content."""
    if not data.strip():
        raise InvalidArgument("the file is empty", field="file")
    named = EXTENSIONS.get(PurePosixPath(filename).suffix.lower()) if filename else None
    is_parquet = data.startswith(PARQUET_MAGIC)
    if is_parquet and requested not in (None, FileFormat.PARQUET):
        raise InvalidArgument(
            f"the file is Parquet (it starts with the PAR1 magic bytes), not {requested.name}", field="format"
        )
    if is_parquet and named not in (None, FileFormat.PARQUET):
        raise InvalidArgument(
            f"{filename} is a Parquet file (it starts with the PAR1 magic bytes) named like {named.name}: "
            "rename it .parquet or pass format parquet",
            field="filename",
        )
    if is_parquet:
        return FileFormat.PARQUET
    if requested == FileFormat.PARQUET or (requested is None and named == FileFormat.PARQUET):
        raise InvalidArgument(
            "not a Parquet file: it does not start with the PAR1 magic bytes", field="format"
        )
    if requested is not None:
        return requested
    if named == FileFormat.CSV:
        return FileFormat.CSV
    first = data.lstrip(UTF8_BOM).lstrip()[:1]
    if first == b"[":
        return FileFormat.JSON
    if first == b"{":
        return FileFormat.JSONL
    return named or FileFormat.CSV


def decode_text(data: bytes, encoding: str) -> str:
    """The file as text in `encoding` (a Python codec name; empty: UTF-8, with or without a BOM)."""
    try:
        codec = codecs.lookup(encoding.strip() or DEFAULT_ENCODING).name
        # A codec such as base64 or zlib turns bytes into bytes: no text comes out of it.
        "".encode(codec)
    except (LookupError, TypeError):
        raise InvalidArgument(
            f"unknown text encoding '{encoding}': use a Python codec name such as utf-8, cp1252, latin-1 "
            "or utf-16",
            field="encoding",
        ) from None
    skipped = len(UTF8_BOM) if codec == DEFAULT_ENCODING and data.startswith(UTF8_BOM) else 0
    try:
        return data[skipped:].decode(codec)
    except UnicodeDecodeError as exc:
        offset = exc.start + skipped
        line = data[skipped:offset].decode(codec, errors="replace").count("\n") + 1
        named = "UTF-8" if codec == DEFAULT_ENCODING else encoding.strip()
        hint = "; name its encoding, e.g. --encoding cp1252" if codec == DEFAULT_ENCODING else ""
        raise InvalidArgument(
            f"the file is not {named}: byte 0x{data[offset]:02x} at byte offset {offset} cannot be "
            f"decoded{hint}",
            field="encoding",
            row=line,
        ) from None


def read_records(
    data: bytes, file_format: FileFormat, max_row_bytes: int, encoding: str = ""
) -> tuple[list[RawRecord], list[str]]:
    """(rows, column names). Rows that cannot be parsed carry their error; files that cannot be read at
    all raise InvalidArgument. `encoding` applies to the text formats; Parquet strings are UTF-8."""
    if file_format == FileFormat.PARQUET:
        return _read_parquet(data, max_row_bytes)
    text = decode_text(data, encoding)
    if file_format == FileFormat.JSONL:
        return _read_jsonl(text, max_row_bytes)
    if file_format == FileFormat.JSON:
        return _read_json_array(text, max_row_bytes)
    return _read_csv(text, max_row_bytes)


def _too_long(size: int, max_row_bytes: int) -> str:
    return f"too long: the row is {size:,} bytes, the limit is {max_row_bytes:,}"


def _columns_of(records: list[RawRecord]) -> list[str]:
    columns: dict[str, None] = {}
    for record in records:
        if isinstance(record.value, dict):
            columns.update(dict.fromkeys(record.value))
    return list(columns)


def _read_jsonl(text: str, max_row_bytes: int) -> tuple[list[RawRecord], list[str]]:
    records = []
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        size = len(line.encode())
        if size > max_row_bytes:
            records.append(RawRecord(number, error=_too_long(size, max_row_bytes)))
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            records.append(RawRecord(number, error=f"bad JSON: {exc.msg} at column {exc.colno}"))
            continue
        records.append(_object_or_error(number, value))
    return records, _columns_of(records)


def _object_or_error(number: int, value: Any) -> RawRecord:
    if not isinstance(value, dict):
        return RawRecord(number, error=f"bad JSON: expected an object, got {type(value).__name__}")
    return RawRecord(number, value)


def _read_json_array(text: str, max_row_bytes: int) -> tuple[list[RawRecord], list[str]]:
    try:
        values = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidArgument(
            f"bad JSON: {exc.msg} at column {exc.colno}", field="file", row=exc.lineno
        ) from None
    if not isinstance(values, list):
        raise InvalidArgument(
            f"a JSON file must hold an array of rows, not a {type(values).__name__}", field="file"
        )
    records = []
    for index, value in enumerate(values, start=1):
        size = len(json.dumps(value, ensure_ascii=False).encode())
        if size > max_row_bytes:
            records.append(RawRecord(index, error=_too_long(size, max_row_bytes)))
        else:
            records.append(_object_or_error(index, value))
    return records, _columns_of(records)


def _read_csv(text: str, max_row_bytes: int) -> tuple[list[RawRecord], list[str]]:
    # The row limit is ours to enforce (with the row's line); csv's own per-field limit would abort the file.
    csv.field_size_limit(2**31 - 1)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=sniff_delimiter(text))
    try:
        header = next(reader)
    except StopIteration:
        raise InvalidArgument("the file is empty", field="file") from None
    except csv.Error as exc:
        raise InvalidArgument(f"bad CSV header: {exc}", field="file", row=1) from None
    header = [column.strip() for column in header]
    if not any(header):
        raise InvalidArgument("the CSV header row is empty", field="file", row=1)
    records = []
    last_line = reader.line_num
    while True:
        start_line = last_line + 1
        try:
            values = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            raise InvalidArgument(f"bad CSV: {exc}", field="file", row=start_line) from None
        last_line = reader.line_num
        if not values or not any(v.strip() for v in values):
            continue
        size = sum(len(v.encode()) for v in values) + len(values) - 1
        if size > max_row_bytes:
            records.append(RawRecord(start_line, error=_too_long(size, max_row_bytes)))
        elif len(values) > len(header):
            records.append(
                RawRecord(
                    start_line, error=f"bad CSV row: {len(values)} values, the header has {len(header)}"
                )
            )
        else:
            # A short row leaves its last columns out, so they read as missing fields.
            records.append(RawRecord(start_line, dict(zip(header, values, strict=False))))
    return records, header


def sniff_delimiter(text: str) -> str:
    """The delimiter that reads the first rows as a table: a header of at least two columns that the most
    rows match, then the most columns; "," when none splits the header (a one-column file)."""
    best, best_score = CSV_DELIMITERS[0], (0.0, 1)
    for delimiter in CSV_DELIMITERS:
        reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
        try:
            header, *rows = itertools.islice(reader, _SNIFFED_CSV_ROWS)
        except (csv.Error, ValueError):
            continue  # unreadable with this delimiter (or empty): the real read reports the file's error
        rows = [row for row in rows if any(value.strip() for value in row)]
        if len(header) < 2:
            continue
        matching = sum(1 for row in rows if len(row) == len(header)) / len(rows) if rows else 1.0
        if (matching, len(header)) > best_score:
            best, best_score = delimiter, (matching, len(header))
    return best


def _read_parquet(data: bytes, max_row_bytes: int) -> tuple[list[RawRecord], list[str]]:
    try:
        table = pq.read_table(pa.BufferReader(data))
    except (pa.ArrowException, OSError) as exc:
        raise InvalidArgument(f"cannot read the Parquet file: {exc}", field="file") from None
    records = []
    for index, value in enumerate(table.to_pylist(), start=1):
        size = len(json.dumps(value, ensure_ascii=False, default=str).encode())
        if size > max_row_bytes:
            records.append(RawRecord(index, error=_too_long(size, max_row_bytes)))
        else:
            records.append(RawRecord(index, value))
    return records, list(table.column_names)

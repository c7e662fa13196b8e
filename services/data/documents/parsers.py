"""Documents (Markdown, HTML, plain text, PDF, DOCX) as blocks of text under their heading path.

A block is the smallest unit the chunker keeps whole when it can: a paragraph, a list item, a code block,
a table, a PDF page's paragraph. Each keeps where it came from (line, page or paragraph number), so
every generated pair can be traced back to its source.

Parsers, all from PyPI, chosen for being maintained, pure Python or already in the venv, and offline:
- Markdown: markdown-it-py (already a dependency through rich): a CommonMark parser that gives every
  block its source line range, so blocks keep their Markdown (backticks around commands survive).
- HTML: lxml.html (already installed through sacrebleu): fast, tolerant of broken pages, and gives
  each element its source line. Script, style and navigation elements are dropped.
- PDF: pypdf (pure Python, actively maintained, no system libraries): per-page text and the outline
  (bookmarks), which gives a PDF its heading path. It does no OCR: an image-only PDF has no text.
- DOCX: python-docx: paragraphs with their style (Heading 1..9, Title) and tables in body order.
- Plain text: paragraphs split on blank lines; a short line without final punctuation followed by a
  paragraph is taken as a heading.
A document that cannot be read, or has no text, raises DocumentRejected with the reason: the caller
reports it per document and goes on with the others.
"""

import io
import re
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import PurePath

from lxml import etree
from lxml import html as lxml_html
from markdown_it import MarkdownIt

MARKDOWN_SUFFIXES = (".md", ".markdown")
HTML_SUFFIXES = (".html", ".htm")
TEXT_SUFFIXES = (".txt", ".text", ".rst")
SUPPORTED_SUFFIXES = (*MARKDOWN_SUFFIXES, *HTML_SUFFIXES, *TEXT_SUFFIXES, ".pdf", ".docx")

_HTML_HEADINGS = {f"h{level}": level for level in range(1, 7)}
_HTML_BLOCKS = {"p", "li", "pre", "blockquote", "td", "th", "dt", "dd", "figcaption", "caption"}
_HTML_DROPPED = ("script", "style", "nav", "noscript", "template", "head")
_DOCX_HEADING = re.compile(r"^Heading (\d)$")
_TEXT_HEADING_MAX_CHARS = 80


class DocumentRejected(Exception):
    """This document yields nothing (unreadable, no text, unsupported): the reason goes in the report."""


@dataclass(frozen=True)
class Block:
    text: str
    heading_path: tuple[str, ...]
    unit: str  # line | page | paragraph: what `position` counts
    position: int  # 1-based

    @property
    def location(self) -> str:
        return f"{self.unit} {self.position}"


def parse_document(filename: str, data: bytes) -> list[Block]:
    """The document's blocks in reading order; DocumentRejected when it has none."""
    suffix = PurePath(filename).suffix.lower()
    if suffix in MARKDOWN_SUFFIXES:
        blocks = parse_markdown(_decode(data))
    elif suffix in HTML_SUFFIXES:
        blocks = parse_html(data)
    elif suffix in TEXT_SUFFIXES:
        blocks = parse_text(_decode(data))
    elif suffix == ".pdf":
        blocks = parse_pdf(data)
    elif suffix == ".docx":
        blocks = parse_docx(data)
    else:
        raise DocumentRejected(
            f"unsupported document type '{suffix or filename}' (supported: {', '.join(SUPPORTED_SUFFIXES)})"
        )
    blocks = [b for b in blocks if b.text.strip()]
    if not blocks:
        raise DocumentRejected("the document has no text")
    return blocks


def _decode(data: bytes) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise DocumentRejected(f"not UTF-8 text (byte {err.start})") from None


class _HeadingPath:
    """The headings above the current point, by level."""

    def __init__(self) -> None:
        self._levels: list[tuple[int, str]] = []

    def enter(self, level: int, title: str) -> None:
        self._levels = [(lv, t) for lv, t in self._levels if lv < level] + [(level, title)]

    @property
    def path(self) -> tuple[str, ...]:
        return tuple(title for _, title in self._levels)


def parse_markdown(text: str) -> list[Block]:
    lines = text.splitlines()
    tokens = MarkdownIt("commonmark").enable("table").parse(text)
    headings = _HeadingPath()
    blocks: list[Block] = []
    for index, token in enumerate(tokens):
        if token.type == "heading_open":
            headings.enter(int(token.tag[1:]), tokens[index + 1].content.strip())
            continue
        # Top-level blocks, and each item of a top-level list on its own (a bullet is often one fact).
        top_level = (
            token.level == 0
            and token.nesting != -1
            and token.type != "hr"
            and not token.type.endswith("list_open")
        )
        list_item = token.type == "list_item_open" and token.level == 1
        if token.map is None or not (top_level or list_item):
            continue
        start, end = token.map
        blocks.append(Block("\n".join(lines[start:end]).strip(), headings.path, "line", start + 1))
    return blocks


def parse_html(data: bytes) -> list[Block]:
    try:
        root = lxml_html.document_fromstring(data)
    except (etree.ParserError, ValueError) as err:
        raise DocumentRejected(f"not readable HTML: {err}") from None
    for element in root.xpath("|".join(f"//{tag}" for tag in _HTML_DROPPED)):
        element.drop_tree()
    headings = _HeadingPath()
    blocks: list[Block] = []
    for element in root.iter():
        if not isinstance(element.tag, str):  # comments, processing instructions
            continue
        tag = element.tag.lower()
        if tag in _HTML_HEADINGS:
            headings.enter(_HTML_HEADINGS[tag], _squash(element.text_content()))
        elif tag in _HTML_BLOCKS and not any(a.tag in _HTML_BLOCKS for a in element.iterancestors()):
            text = element.text_content() if tag == "pre" else _squash(element.text_content())
            blocks.append(Block(text.strip(), headings.path, "line", element.sourceline or 1))
    if not blocks:
        # A page with text only in bare <div>s or <body>: one block per heading-free page.
        body = _squash(root.text_content())
        if body:
            blocks.append(Block(body, (), "line", 1))
    return blocks


def parse_text(text: str) -> list[Block]:
    headings = _HeadingPath()
    blocks: list[Block] = []
    paragraphs = list(_paragraphs(text))
    for index, (line, paragraph) in enumerate(paragraphs):
        followed = index + 1 < len(paragraphs)
        if followed and "\n" not in paragraph and _looks_like_heading(paragraph):
            headings.enter(1, paragraph.strip())
        else:
            blocks.append(Block(paragraph, headings.path, "line", line))
    return blocks


def _paragraphs(text: str) -> Iterator[tuple[int, str]]:
    """(first line, paragraph) for each run of non-blank lines."""
    start, current = 0, []
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            if not current:
                start = number
            current.append(line.rstrip())
        elif current:
            yield start, "\n".join(current)
            current = []
    if current:
        yield start, "\n".join(current)


def _looks_like_heading(line: str) -> bool:
    stripped = line.strip()
    return 0 < len(stripped) <= _TEXT_HEADING_MAX_CHARS and stripped[-1] not in ".,;:!?)\"'"


def parse_pdf(data: bytes) -> list[Block]:
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted:
            raise DocumentRejected("the PDF is encrypted")
        pages = [page.extract_text() or "" for page in reader.pages]
        outline = _pdf_outline(reader)
    except (PdfReadError, ValueError, KeyError, TypeError, OSError) as err:
        raise DocumentRejected(f"not a readable PDF: {err}") from None
    if not pages:
        raise DocumentRejected("the PDF has no pages")
    if not any(page.strip() for page in pages):
        raise DocumentRejected(f"the PDF's {len(pages)} page(s) hold no text (image-only? OCR is not done)")
    blocks: list[Block] = []
    for number, page_text in enumerate(pages, start=1):
        path = _path_at_page(outline, number)
        for _, paragraph in _paragraphs(page_text):
            blocks.append(Block(paragraph, path, "page", number))
    return blocks


def _pdf_outline(reader) -> list[tuple[int, int, str]]:  # noqa: ANN001 - pypdf's reader
    """(page, depth, title) of each bookmark, in outline order."""
    entries: list[tuple[int, int, str]] = []

    def walk(items: list, depth: int) -> None:
        for item in items:
            if isinstance(item, list):
                walk(item, depth + 1)
                continue
            page = reader.get_destination_page_number(item)
            if page is not None and page >= 0:
                entries.append((page + 1, depth, str(item.title).strip()))

    walk(reader.outline, 1)
    return entries


def _path_at_page(outline: list[tuple[int, int, str]], page: int) -> tuple[str, ...]:
    headings = _HeadingPath()
    for start, depth, title in outline:
        if start <= page:
            headings.enter(depth, title)
    return headings.path


def parse_docx(data: bytes) -> list[Block]:
    import docx
    from docx.opc.exceptions import PackageNotFoundError
    from docx.table import Table

    try:
        document = docx.Document(io.BytesIO(data))
        content = list(document.iter_inner_content())
    except (PackageNotFoundError, zipfile.BadZipFile, KeyError, ValueError, etree.XMLSyntaxError) as err:
        raise DocumentRejected(f"not a readable DOCX file: {type(err).__name__}: {err}") from None
    headings = _HeadingPath()
    blocks: list[Block] = []
    for number, item in enumerate(content, start=1):
        if isinstance(item, Table):
            rows = [" | ".join(_squash(cell.text) for cell in row.cells) for row in item.rows]
            blocks.append(Block("\n".join(rows), headings.path, "paragraph", number))
            continue
        level = _docx_heading_level(item.style.name if item.style is not None else "")
        if level is not None and item.text.strip():
            headings.enter(level, _squash(item.text))
        else:
            blocks.append(Block(item.text.strip(), headings.path, "paragraph", number))
    return blocks


def _docx_heading_level(style: str) -> int | None:
    """Title sits above Heading 1; other styles are body text."""
    if style == "Title":
        return 0
    match = _DOCX_HEADING.match(style)
    return int(match.group(1)) if match else None


def _squash(text: str) -> str:
    return " ".join(text.split())

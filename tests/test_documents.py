"""Documents to Q&A: parsers, chunking by headings, the structural generator and the checks on pairs."""

import pytest
from document_fixtures import RUNBOOK_HTML, RUNBOOK_MD, blank_pdf_bytes, docx_bytes, pdf_bytes

from ftcommon.errors import InvalidArgument
from services.data.documents.chunking import ChunkSettings, chunk_blocks
from services.data.documents.parsers import DocumentRejected, parse_document


def test_markdown_blocks_keep_heading_path_and_line():
    blocks = parse_document("runbook.md", RUNBOOK_MD.encode())
    install = next(b for b in blocks if "make setup" in b.text)
    assert install.heading_path == ("Runbook", "Install")
    assert install.location == "line 7"
    assert "`make setup`" in install.text  # Markdown kept: commands stay in backticks
    item = next(b for b in blocks if "stack status" in b.text)
    assert item.heading_path == ("Runbook", "Wipe local data") and item.location == "line 13"


def test_html_blocks_follow_headings_and_drop_scripts_and_navigation():
    blocks = parse_document("runbook.html", RUNBOOK_HTML)
    texts = [b.text for b in blocks]
    assert texts == [
        "The platform runs four services on one machine.",
        "Run make setup to create the virtual environment.",
        "It needs Python 3.11.",
    ]
    assert blocks[1].heading_path == ("Runbook", "Install") and blocks[1].location == "line 6"


def test_pdf_text_by_page_with_outline_as_headings():
    data = pdf_bytes(
        [["Run make setup first.", "It needs Python 3.11."], ["Run make clean to wipe var/."]],
        outline=[("Install", 0), ("Wipe", 1)],
    )
    blocks = parse_document("guide.pdf", data)
    assert [(b.heading_path, b.location) for b in blocks] == [(("Install",), "page 1"), (("Wipe",), "page 2")]
    assert "Python 3.11" in blocks[0].text and "make clean" in blocks[1].text


def test_docx_headings_and_paragraphs():
    data = docx_bytes([("h1", "Runbook"), ("p", "Intro."), ("h2", "Install"), ("p", "Run make setup.")])
    blocks = parse_document("runbook.docx", data)
    assert [(b.text, b.heading_path, b.location) for b in blocks] == [
        ("Intro.", ("Runbook",), "paragraph 2"),
        ("Run make setup.", ("Runbook", "Install"), "paragraph 4"),
    ]


def test_plain_text_short_lines_become_headings():
    blocks = parse_document(
        "notes.txt", b"Install\n\nRun make setup.\nIt takes minutes.\n\nWipe\n\nRun make clean.\n"
    )
    assert [(b.heading_path, b.location) for b in blocks] == [(("Install",), "line 3"), (("Wipe",), "line 8")]


@pytest.mark.parametrize(
    ("filename", "data", "reason"),
    [
        ("scan.pdf", blank_pdf_bytes(), "hold no text"),
        ("empty.pdf", b"", "not a readable PDF"),
        ("broken.docx", b"PK\x03\x04 not really a zip", "not a readable DOCX"),
        ("blank.html", b"<html><body><script>var x = 1;</script></body></html>", "no text"),
        ("empty.md", b"   \n\n", "no text"),
        ("sheet.xlsx", b"PK", "unsupported document type '.xlsx'"),
        ("latin.txt", "caf\u00e9".encode("latin-1"), "not UTF-8"),
    ],
)
def test_bad_documents_are_rejected_with_a_reason(filename, data, reason):
    with pytest.raises(DocumentRejected, match=reason):
        parse_document(filename, data)


def test_chunks_never_span_headings_and_respect_the_size_bound():
    blocks = parse_document("runbook.md", RUNBOOK_MD.encode())
    chunks = chunk_blocks("runbook.md", blocks, ChunkSettings(max_chars=60, overlap_chars=20))
    assert all(len(c.text) <= 60 for c in chunks)
    for chunk in chunks:
        # Each chunk's text comes from its own section only.
        assert ("make clean" in chunk.text) <= (chunk.heading_path == ("Runbook", "Wipe local data"))
    paths = [c.heading_path for c in chunks]
    assert paths == sorted(paths, key=paths.index)  # a section's chunks are consecutive
    wipe = [c for c in chunks if c.heading_path[-1] == "Wipe local data" and c.location == "line 11"]
    assert len(wipe) == 2 and wipe[1].text.startswith("folder with every")  # the overlap
    whole = chunk_blocks("runbook.md", blocks, ChunkSettings())
    assert [c.heading_path[-1] for c in whole] == ["Runbook", "Install", "Wipe local data"]


@pytest.mark.parametrize(
    ("settings", "field"),
    [(ChunkSettings(max_chars=0), "chunking.max_chars"), (ChunkSettings(100, 60), "chunking.overlap_chars")],
)
def test_bad_chunk_settings_name_the_field(settings, field):
    with pytest.raises(InvalidArgument) as caught:
        chunk_blocks("runbook.md", parse_document("runbook.md", RUNBOOK_MD.encode()), settings)
    assert caught.value.field == field

"""Small documents the document tests write themselves: PDF (hand-made bytes plus pypdf), DOCX, HTML."""

import io


def pdf_bytes(pages: list[list[str]], outline: list[tuple[str, int]] | None = None) -> bytes:
    """A PDF whose pages show the given lines in Helvetica; outline: (title, 0-based page) bookmarks."""
    objects = ["<< /Type /Catalog /Pages 2 0 R >>", ""]  # the page tree is filled in below
    font = 3
    objects.append("<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>")
    page_ids = []
    for lines in pages:
        ops = ["BT /F1 12 Tf 14 TL 72 720 Td"]
        for line in lines:
            escaped = line.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")
            ops.append(f"({escaped}) Tj T*")
        ops.append("ET")
        stream = "\n".join(ops)
        objects.append(f"<< /Length {len(stream.encode())} >>\nstream\n{stream}\nendstream")
        content = len(objects)
        objects.append(
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents {content} 0 R "
            f"/Resources << /Font << /F1 {font} 0 R >> >> >>"
        )
        page_ids.append(len(objects))
    kids = " ".join(f"{i} 0 R" for i in page_ids)
    objects[1] = f"<< /Type /Pages /Kids [{kids}] /Count {len(page_ids)} >>"
    out = io.BytesIO()
    out.write(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(out.tell())
        out.write(f"{number} 0 obj\n{body}\nendobj\n".encode())
    xref = out.tell()
    out.write(f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode())
    for offset in offsets:
        out.write(f"{offset:010d} 00000 n \n".encode())
    out.write(f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode())
    data = out.getvalue()
    if not outline:
        return data
    from pypdf import PdfReader, PdfWriter

    writer = PdfWriter()
    writer.append(PdfReader(io.BytesIO(data)))
    for title, page in outline:
        writer.add_outline_item(title=title, page_number=page)
    result = io.BytesIO()
    writer.write(result)
    return result.getvalue()


def blank_pdf_bytes() -> bytes:
    """One page and no text, as a scanned page without OCR looks to a text extractor."""
    from pypdf import PdfWriter

    writer = PdfWriter()
    writer.add_blank_page(612, 792)
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def docx_bytes(items: list[tuple[str, str]]) -> bytes:
    """(style, text) paragraphs: style "h1".."h3" for headings, "p" for body text."""
    import docx

    document = docx.Document()
    for style, text in items:
        if style.startswith("h"):
            document.add_heading(text, level=int(style[1:]))
        else:
            document.add_paragraph(text)
    out = io.BytesIO()
    document.save(out)
    return out.getvalue()


RUNBOOK_MD = """# Runbook

The platform runs four services on one machine.

## Install

Run `make setup` to create the virtual environment. It needs Python 3.11 and takes about 4 minutes.

## Wipe local data

Run `make clean` to delete the var/ folder with every dataset, model and job.

- `ftctl stack status`: shows which services are running and their ports.
"""

RUNBOOK_HTML = b"""<html><head><title>t</title><style>p {color: red}</style></head><body>
<nav><a href="/">Home</a></nav>
<h1>Runbook</h1>
<p>The platform runs four services on one machine.</p>
<h2>Install</h2>
<p>Run <code>make setup</code> to create the virtual environment.</p>
<ul><li>It needs Python 3.11.</li></ul>
<script>var hidden = "never a block";</script>
</body></html>
"""

"""Test documents made without extra tools: pypdfium2 writes blank PDFs, and an encrypted
one is written by hand (a Standard security handler whose check values match no password)."""

from __future__ import annotations

import io

import pypdfium2 as pdfium


def make_pdf(pages: int = 5) -> bytes:
    pdf = pdfium.PdfDocument.new()
    for i in range(pages):
        pdf.new_page(100 + 10 * i, 140)  # points: small pages render to few image tokens
    buffer = io.BytesIO()
    pdf.save(buffer)
    pdf.close()
    return buffer.getvalue()


def encrypted_pdf() -> bytes:
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 200 200] >>",
        b"<< /Filter /Standard /V 1 /R 2 /O <" + b"11" * 32 + b"> /U <" + b"22" * 32 + b"> /P -4 >>",
    ]
    return assemble(objects, b"/Encrypt 4 0 R /ID [<" + b"ab" * 16 + b"> <" + b"ab" * 16 + b">] ")


def assemble(objects: list[bytes], trailer: bytes = b"") -> bytes:
    """A PDF of these objects (numbered from 1, the first the catalog), its xref and trailer."""
    out, offsets = bytearray(b"%PDF-1.4\n"), []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    for offset in offsets:
        out += b"%010d 00000 n \n" % offset
    out += b"trailer\n<< /Size %d /Root 1 0 R %s>>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, trailer, xref)
    return bytes(out)


def render_bomb(depth: int = 7, fan: int = 10) -> bytes:
    """A one-page PDF of a few KB whose page draws a form XObject that draws the next one `fan`
    times, `depth` deep: fan**depth rectangles (10**7: pdfium renders it for minutes)."""
    first_form = 6
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 200 200] /Resources << /XObject << /X %d 0 R >> >> "
        b"/Contents 4 0 R >>" % first_form,
        _stream(b"/X Do"),
        b"<< >>",  # unused: keeps the forms' numbers simple
    ]
    for level in range(depth):
        if level == depth - 1:
            content = b"0 0 1 1 re f"
            resources = b""
        else:
            content = b" ".join(b"q 1 0 0 1 %d 0 cm /X Do Q" % i for i in range(fan))
            resources = b"/Resources << /XObject << /X %d 0 R >> >> " % (first_form + level + 1)
        head = b"<< /Type /XObject /Subtype /Form /BBox [0 0 200 200] " + resources
        objects.append(_stream(content, head))
    return assemble(objects)


def _stream(content: bytes, head: bytes = b"<< ") -> bytes:
    return head + b"/Length %d >>\nstream\n" % len(content) + content + b"\nendstream"

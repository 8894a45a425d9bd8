"""Rendering a PDF's pages in a child process, so a page that would render for minutes (nested
form XObjects: a few KB can cost pdfium a minute) is stopped by a clock or a cancel: the
parent (worker_vision/pages.py) kills the child. pdfium cannot be interrupted in-process.

    python -m worker_vision.render_child DPI MAX_PIXELS PAGE [PAGE ...]  < document.pdf

For each page, in order, it writes a 12-byte header (width, height, PNG length: big-endian
uint32) and the PNG; a failure is a header of zeros followed by the message's UTF-8.
"""

from __future__ import annotations

import io
import math
import struct
import sys

import pypdfium2 as pdfium

POINTS_PER_INCH = 72
HEADER = struct.Struct(">III")


def render_pages(data: bytes, page_numbers: list[int], dpi: int, max_pixels: int):
    """PNG bytes with their size, one per page number (1-based), in order."""
    pdf = pdfium.PdfDocument(data)
    try:
        for number in page_numbers:
            page = pdf[number - 1]
            width, height = page.get_size()
            scale = dpi / POINTS_PER_INCH
            pixels = width * height * scale * scale
            if pixels > max_pixels:
                scale *= math.sqrt(max_pixels / pixels)
            image = page.render(scale=scale).to_pil().convert("RGB")
            buffer = io.BytesIO()
            image.save(buffer, format="PNG")
            yield buffer.getvalue(), image.size
            page.close()
    finally:
        pdf.close()


def main(argv: list[str]) -> int:
    dpi, max_pixels, *pages = (int(a) for a in argv)
    out = sys.stdout.buffer
    try:
        for png, (width, height) in render_pages(sys.stdin.buffer.read(), pages, dpi, max_pixels):
            out.write(HEADER.pack(width, height, len(png)) + png)
            out.flush()
    except Exception as exc:  # the parent says why the document failed
        message = str(exc).encode()[:1000]
        out.write(HEADER.pack(0, 0, len(message)) + message)
        out.flush()
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

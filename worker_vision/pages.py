"""Rendering a document's pages with pypdfium2, in a job of the vision worker (never in the
API's request): the render job of work/documents.py.

Each selected page becomes a PNG in the blob store at the document's dpi, scaled down when
it would exceed MAX_IMAGE_PIXELS (a poster-sized page at 300 dpi), and the pages are then
fanned out as chat jobs (`documents.fan_out`). Rendering runs in the worker's admission
thread (contract/done.py): 7–47 ms a page at 150 dpi, so a 200-page document holds admission for
seconds; running jobs keep generating meanwhile.
"""

from __future__ import annotations

import io
import math

import pypdfium2 as pdfium

from contract import blobs
from contract.context import Context
from contract.done import Done
from contract.keys import Keys
from contract.payloads import ImagePart
from work import documents
from work.documents import DocStatus, DocumentJob

POINTS_PER_INCH = 72


def render(payload: dict) -> Done:
    """Job function: render the document's pages to blobs and enqueue one job per page."""
    doc = DocumentJob.model_validate(payload)
    ctx = Context.for_current_job()
    conn, keys, settings = ctx.conn, ctx.keys, ctx.settings
    if documents.status_of(ctx, doc.id) != DocStatus.QUEUED:
        return Done()  # cancelled (or rendered already by an earlier attempt)
    if not documents.set_status(ctx, doc.id, DocStatus.RENDERING):
        return Done()
    try:
        assert doc.source_blob is not None  # render jobs are made for uploaded PDFs only
        data = blobs.get(conn, keys, doc.source_blob)
        ttl = settings.batch_queued_ttl + settings.job_timeout
        parts = [
            _store(conn, keys, png, ttl)
            for png in render_pages(data, doc.page_numbers, doc.dpi, settings.max_image_pixels)
        ]
    except Exception as exc:
        documents.set_status(
            ctx,
            doc.id,
            DocStatus.FAILED,
            error={"code": "render_failed", "message": f"the document could not be rendered: {exc}"},
        )
        raise
    documents.fan_out(ctx, doc, parts)
    return Done({"pages": len(parts)})


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


def _store(conn, keys: Keys, rendered, ttl: int) -> ImagePart:
    png, (width, height) = rendered
    return ImagePart(blob=blobs.put(conn, keys, png, ttl), media_type="image/png", width=width, height=height)

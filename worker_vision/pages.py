"""Rendering a document's pages with pypdfium2, in a job of the vision worker (never in the
API's request): the render job of work/documents.py.

Each selected page becomes a PNG in the blob store at the document's dpi, scaled down when
it would exceed MAX_IMAGE_PIXELS (a poster-sized page at 300 dpi), and the pages are then
fanned out as chat jobs (`documents.fan_out`). pdfium renders in a child process
(worker_vision/render_child.py) that is killed when a page takes longer than
RENDER_PAGE_TIMEOUT or the document is deleted: a few KB of nested form XObjects can cost
pdfium a minute, and it cannot be interrupted in-process. The job waits for the child in the
worker's side thread (`Later`, contract/done.py), never in its admission loop: chats are
admitted, and running jobs keep generating, while a document renders (7–47 ms a page at
150 dpi, RENDER_PAGE_TIMEOUT at most).
"""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

from contract import blobs
from contract.context import Context
from contract.done import Done, Later
from contract.keys import Keys
from contract.payloads import ImagePart
from work import documents
from work.documents import DocStatus, DocumentJob

from .render_child import HEADER

CHECK_EVERY = 0.25
"""Seconds between two looks at the document's status while a page renders (a DELETE)."""


def render(payload: dict) -> Done | Later:
    """Job function: render the document's pages to blobs and enqueue one job per page."""
    doc = DocumentJob.model_validate(payload)
    ctx = Context.for_current_job()
    if documents.status_of(ctx, doc.id) != DocStatus.QUEUED:
        return Done()  # cancelled (or rendered already by an earlier attempt)
    return Later(lambda: _render(ctx, doc))


def _render(ctx: Context, doc: DocumentJob) -> Done:
    conn, keys, settings = ctx.conn, ctx.keys, ctx.settings
    if not documents.set_status(ctx, doc.id, DocStatus.RENDERING):
        return Done()
    try:
        assert doc.source_blob is not None  # render jobs are made for uploaded PDFs only
        data = blobs.get(conn, keys, doc.source_blob)
        ttl = settings.batch_queued_ttl + settings.job_timeout
        pages = render_in_child(
            data, doc.page_numbers, doc.dpi, settings.max_image_pixels, settings.render_page_timeout,
            cancelled=lambda: documents.status_of(ctx, doc.id) == DocStatus.CANCELED,
        )  # fmt: skip
        parts = [_store(conn, keys, png, ttl) for png in pages]
    except RenderCancelled:
        return Done()  # DELETE ended the document; the child is gone
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


class RenderFailed(Exception):
    pass


class RenderCancelled(Exception):
    pass


def render_in_child(
    data: bytes, page_numbers: list[int], dpi: int, max_pixels: int, page_timeout: float, cancelled: Callable[[], bool]
) -> Iterator[tuple[bytes, tuple[int, int]]]:
    """PNG bytes with their size, one per page, rendered by a child process
    (worker_vision/render_child.py) that is killed when a page takes longer than
    `page_timeout` seconds or `cancelled()` (asked every CHECK_EVERY seconds) says so."""
    argv = [sys.executable, "-m", "worker_vision.render_child", str(dpi), str(max_pixels), *map(str, page_numbers)]
    child = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        assert child.stdin is not None and child.stdout is not None
        child.stdin.write(data)  # the child reads all of it before it renders anything
        child.stdin.close()
        pipe = child.stdout.fileno()
        for number in page_numbers:
            if cancelled():  # a long run of quick pages is stoppable too
                raise RenderCancelled()
            deadline = time.monotonic() + page_timeout
            too_slow = f"page {number} took longer than {page_timeout:g} s to render (RENDER_PAGE_TIMEOUT)"
            width, height, length = HEADER.unpack(_read(pipe, HEADER.size, deadline, cancelled, too_slow))
            body = _read(pipe, length, deadline, cancelled, too_slow)
            if width == 0:
                raise RenderFailed(body.decode(errors="replace"))
            yield body, (width, height)
    finally:
        child.kill()
        child.wait()


def _read(pipe: int, n: int, deadline: float, cancelled: Callable[[], bool], too_slow: str) -> bytes:
    data = bytearray()
    while len(data) < n:
        left = deadline - time.monotonic()
        if left <= 0:
            raise RenderFailed(too_slow)
        readable, _, _ = select.select([pipe], [], [], min(CHECK_EVERY, left))
        if readable:
            chunk = os.read(pipe, n - len(data))
            if not chunk:
                raise RenderFailed("the renderer stopped before the page was done")
            data += chunk
        elif cancelled():
            raise RenderCancelled()
    return bytes(data)


def _store(conn, keys: Keys, rendered, ttl: int) -> ImagePart:
    png, (width, height) = rendered
    return ImagePart(blob=blobs.put(conn, keys, png, ttl), media_type="image/png", width=width, height=height)

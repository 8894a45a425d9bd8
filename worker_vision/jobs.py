"""rq job functions of the vision worker (enqueued by dotted path from the API).

A batching worker (runtime/batching.py) calls a job function in its main thread when it admits
the job, with rq's `get_current_job()` answering: the function checks the payload, fetches
the job's images from the blob store and decodes them, and returns the request its engine
runs. Decoding here keeps Redis round trips and PIL work off the engine thread, which
generates for every other job.

Images reach mlx-vlm only as decoded PIL images, never as strings: mlx-vlm's `load_image`
opens any string as a local path and follows URLs (and their redirects).
"""

from __future__ import annotations

import io
import os
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from PIL import Image

from contract import blobs
from contract.context import Context
from contract.payloads import ChatJob
from runtime.rejections import RequestRejected


class ImageUnreadable(RequestRejected):
    code = "invalid_image"


INLINE_PIXELS = 4_000_000
"""A request whose images hold fewer pixels together is decoded at once, in the admission loop
(a few ms), never queued behind large images' decoding."""
DECODERS = ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 2), thread_name_prefix="decode")
"""Image decoding beside the admission loop, one request per task, at most one per core (up to
4): eight 6000² WebPs decoding at once on two cores starved the worker's heartbeat past
WORKER_TTL, and the API took a live worker for dead."""


@dataclass
class VisionRequest:
    """A chat job and its images, decoded, in the order of their parts in the messages."""

    job: ChatJob
    images: list[Image.Image] = field(default_factory=list)


def chat(payload: dict) -> VisionRequest | Future[VisionRequest]:
    """A chat completion over text and images: the engine streams it into the job's stream.
    Raises (the job ends with an error without running) when an image blob has expired.

    With large images, the request is a Future: they decode in DECODERS (Pillow lets go of the
    GIL) while the worker admits other jobs, and the engine gets the request once they are
    decoded (runtime/batching.py). Decoded here, in the admission loop, three requests of two
    6000² WebPs each held a chat queued behind them 6 s. Small ones decode here at once."""
    job = ChatJob.model_validate(payload)
    parts = [part for message in job.messages for part in message.images]
    if not parts:
        return VisionRequest(job)
    ctx = Context.for_current_job()
    data = [blobs.get(ctx.conn, ctx.keys, part.blob) for part in parts]
    if sum(part.width * part.height for part in parts) <= INLINE_PIXELS:  # milliseconds: no queue
        return VisionRequest(job, [_decode(d) for d in data])
    return DECODERS.submit(lambda: VisionRequest(job, [_decode(d) for d in data]))


def shrink(image: Image.Image, pixels: int | None) -> Image.Image:
    """The image in RGB; one far larger than the model reads (`pixels`, its processor's
    max_pixels) box-reduced first by a whole factor to no fewer pixels than that (the
    processor's own resize does the rest). For a 6000² image and the tiny model the
    conversion and the processor's resize cost the engine thread 0.8 s, now 0.03 s."""
    factor = int((image.width * image.height / pixels) ** 0.5) if pixels else 1
    reduced = image.reduce(factor) if factor >= 2 else image
    return reduced if reduced.mode == "RGB" else reduced.convert("RGB")


def _decode(data: bytes) -> Image.Image:
    """The API checked the header and the pixel count (api/images.py); the pixels are decoded
    here, once: what only decoding finds (a JPEG cut short) ends the job as a 400. Converted
    to RGB by the engine, after `shrink`."""
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
        return image
    except Exception:  # PIL raises many types for corrupt or truncated data
        raise ImageUnreadable("an image could not be decoded (corrupt or truncated)") from None

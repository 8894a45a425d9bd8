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
from dataclasses import dataclass, field

from PIL import Image

from contract import blobs
from contract.context import Context
from contract.payloads import ChatJob
from runtime.rejections import RequestRejected


class ImageUnreadable(RequestRejected):
    code = "invalid_image"


@dataclass
class VisionRequest:
    """A chat job and its images, decoded, in the order of their parts in the messages."""

    job: ChatJob
    images: list[Image.Image] = field(default_factory=list)


def chat(payload: dict) -> VisionRequest:
    """A chat completion over text and images: the engine streams it into the job's stream.
    Raises (the job ends with an error without running) when an image blob has expired."""
    job = ChatJob.model_validate(payload)
    parts = [part for message in job.messages for part in message.images]
    if not parts:
        return VisionRequest(job)
    ctx = Context.for_current_job()
    return VisionRequest(job, [_decode(blobs.get(ctx.conn, ctx.keys, part.blob)) for part in parts])


def _decode(data: bytes) -> Image.Image:
    """The API checked the header and the pixel count (api/images.py); the pixels are decoded
    here, once: what only decoding finds (a JPEG cut short) ends the job as a 400."""
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
        return image.convert("RGB")
    except Exception:  # PIL raises many types for corrupt or truncated data
        raise ImageUnreadable("an image could not be decoded (corrupt or truncated)") from None

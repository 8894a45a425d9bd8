"""Image intake: OpenAI `image_url` parts become validated bytes in the blob store.

What a client sends is checked here, before any job exists: the image must open (the
format is what the bytes say, not what the data URI claims), be PNG, JPEG or WebP, stay
under the byte and pixel caps (a decompression bomb is refused from its header), and
the request may hold at most `MAX_IMAGES` of them and `MAX_REQUEST_PIXELS` together. The
pixels are decoded once, by the worker that runs the job (worker_vision/jobs.py), never here:
a batch file of 35 lossless 6000² WebPs cost the API 13 s of CPU when it decoded them. A
request's images are all checked before any is stored: a refused one leaves nothing behind.
Remote http(s) URLs are refused unless `ALLOW_REMOTE_IMAGES` is on; then they are fetched
here (never by a worker: mlx-vlm's own loader opens any string as a local path and follows
redirects) from public addresses only,
over a connection pinned to the checked address, without redirects, with a size cap and a
timeout. Job payloads carry only the blob keys.
"""

from __future__ import annotations

import base64
import binascii
import http.client
import io
import ipaddress
import socket
import ssl
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

import redis
from PIL import Image

from contract import blobs
from contract.keys import Keys
from contract.payloads import ImagePart
from contract.settings import Settings

from .errors import APIError

MEDIA_TYPES = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp"}


def bad_image(message: str, code: str = "invalid_image", status: int = 400) -> APIError:
    return APIError(status, message, param="messages", code=code)


class PixelBudget:
    """What one request's images may hold together (MAX_REQUEST_PIXELS), spent image by image."""

    def __init__(self, pixels: int):
        self.left = pixels

    def spend(self, pixels: int) -> None:
        self.left -= pixels
        if self.left < 0:
            raise bad_image(
                "the request's images hold more pixels together than MAX_REQUEST_PIXELS; send fewer or smaller",
                code="too_many_pixels",
            )


@dataclass(frozen=True)
class Accepted:
    """An image that passed every check, not yet stored."""

    data: bytes
    media_type: str
    width: int
    height: int


def intake_all(
    urls: list[str], settings: Settings, conn: redis.Redis, keys: Keys, ttl: int | None = None
) -> list[ImagePart]:
    """Validate a request's image URLs (together within MAX_REQUEST_PIXELS), then store their
    bytes for `ttl` seconds (default: as long as a chat job may wait and run); the payload
    parts naming them, in order. Nothing is stored unless every image passes."""
    budget = PixelBudget(settings.max_request_pixels)
    accepted = [accept(url, settings, budget) for url in urls]
    return [store(conn, keys, image, ttl or settings.queued_ttl + settings.job_timeout) for image in accepted]


def store(conn: redis.Redis, keys: Keys, image: Accepted, ttl: int) -> ImagePart:
    digest = blobs.put(conn, keys, image.data, ttl=ttl)
    return ImagePart(blob=digest, media_type=image.media_type, width=image.width, height=image.height)


def accept(url: str, settings: Settings, budget: PixelBudget) -> Accepted:
    """One image URL's bytes, checked; `budget`: the request's pixels left."""
    if url.startswith("data:"):
        data = decode_data_uri(url, settings.max_image_bytes)
    elif url.startswith(("http://", "https://")):
        if not settings.allow_remote_images:
            raise bad_image(
                "remote image URLs are disabled on this server (ALLOW_REMOTE_IMAGES); "
                "send the image as a base64 data URI",
                code="remote_images_disabled",
            )
        data = fetch_remote(url, settings.max_image_bytes, settings.remote_image_timeout)
    else:
        raise bad_image(
            "image_url must be a data URI (data:image/png;base64,...) or an http(s) URL", code="invalid_image_url"
        )
    media_type, width, height = inspect(data, settings.max_image_pixels)
    budget.spend(width * height)
    return Accepted(data, media_type, width, height)


def decode_data_uri(url: str, max_bytes: int) -> bytes:
    header, sep, body = url.partition(",")
    if not sep or not header.endswith(";base64"):
        raise bad_image("image data URIs must be base64: data:image/png;base64,...")
    declared = header[len("data:") : -len(";base64")].lower()
    if declared not in MEDIA_TYPES.values():
        raise bad_image(
            f"unsupported image type {declared[:40]!r}; send image/png, image/jpeg or image/webp",
            code="unsupported_image_type",
        )
    if len(body) > (max_bytes * 4) // 3 + 4:
        raise too_large(max_bytes)
    try:
        data = base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError):
        raise bad_image("the image data URI is not valid base64") from None
    if len(data) > max_bytes:
        raise too_large(max_bytes)
    return data


def too_large(max_bytes: int) -> APIError:
    return bad_image(f"an image is larger than {max_bytes // 1_000_000} MB", code="image_too_large", status=413)


def inspect(data: bytes, max_pixels: int) -> tuple[str, int, int]:
    """(media type, width, height) of PNG, JPEG or WebP bytes, from their header (and a PNG's
    chunk checksums, read without inflating anything): milliseconds, whatever the pixels.
    What only a full decode finds (a JPEG cut short) the worker refuses as `invalid_image`."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            media_type = MEDIA_TYPES.get(image.format or "")
            if media_type is None:
                raise bad_image(
                    f"unsupported image format {image.format}; send PNG, JPEG or WebP", code="unsupported_image_type"
                )
            width, height = image.size
            # Checked on the header, before the pixels are decoded: a bomb never expands.
            if width * height > max_pixels:
                raise bad_image(
                    f"an image has {width}x{height} pixels; the limit is {max_pixels} pixels",
                    code="image_too_many_pixels",
                )
            image.verify()
    except APIError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise bad_image("the image is too large to decode safely", code="image_too_many_pixels") from None
    except Exception:  # PIL raises many types for corrupt or truncated data
        raise bad_image("an image could not be decoded (corrupt, truncated or not an image)") from None
    return media_type, width, height


def is_public_address(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    return ip.is_global and not ip.is_multicast


def fetch_remote(
    url: str, max_bytes: int, timeout: float, address_ok: Callable[[str], bool] = is_public_address
) -> bytes:
    """GET an image from a public address: the host is resolved once, every address it
    resolves to must pass `address_ok`, and the connection goes to the checked address
    (so DNS cannot send it elsewhere later). No redirects; at most `max_bytes`."""
    parts = urlsplit(url)
    host, secure = parts.hostname, parts.scheme == "https"
    if not host:
        raise bad_image("the image URL has no host", code="invalid_image_url")
    port = parts.port or (443 if secure else 80)
    try:
        addresses = {str(info[4][0]) for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)}
    except (socket.gaierror, UnicodeError):
        raise bad_image(f"the image host {host!r} does not resolve", code="image_fetch_failed") from None
    if not addresses or not all(address_ok(a) for a in addresses):
        raise bad_image("image URLs must point to public internet addresses", code="image_url_not_allowed")
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    connection = (http.client.HTTPSConnection if secure else http.client.HTTPConnection)(host, port, timeout=timeout)
    try:
        raw = socket.create_connection((sorted(addresses)[0], port), timeout=timeout)
        connection.sock = ssl.create_default_context().wrap_socket(raw, server_hostname=host) if secure else raw
        connection.request("GET", path, headers={"Host": parts.netloc.rpartition("@")[2], "Accept": "image/*"})
        response = connection.getresponse()
        if 300 <= response.status < 400:
            raise bad_image("the image URL redirects; redirects are not followed", code="image_fetch_failed")
        if response.status != 200:
            raise bad_image(f"fetching the image URL answered HTTP {response.status}", code="image_fetch_failed")
        data = response.read(max_bytes + 1)
    except (OSError, http.client.HTTPException):
        raise bad_image(
            "the image URL could not be fetched (timeout or connection error)", code="image_fetch_failed"
        ) from None
    finally:
        connection.close()
    if len(data) > max_bytes:
        raise too_large(max_bytes)
    return data

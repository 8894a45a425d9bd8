"""Hardening III, case 3: heavy but valid images cost the API no decoding, and a refused
request leaves no image behind.

The API checks an image from its header (format, size, pixel caps; a PNG's checksums) and the
worker that runs the job decodes it, once (api/images.py, worker_vision/jobs.py). A batch file
of 35 lossless 6000² WebPs cost the API 13 s of CPU (`/health` waited 3 s) when it decoded
them itself; the images of a batch line refused for its second image stayed stored 24 h.
"""

from __future__ import annotations

import hashlib
import io
import json
import time

import pytest
import requests
from PIL import Image

from .support import alias, client_for
from .test_documents import MODEL, docs_worker  # noqa: F401  (docs_worker builds the tiny model)
from .test_vision import bomb_png, data_uri, image_message, png

CHAT = "/v1/chat/completions"
API_SECONDS = 1.0
"""What one request may cost the API (the issue's figure)."""


@pytest.fixture(scope="module")
def hostile_worker(stack, models_dir, docs_worker):  # noqa: F811
    worker = stack.start_vision_worker(alias(models_dir, "tiny-vision-hostile", MODEL))
    yield "tiny-vision-hostile"
    worker.stop()


def big_webp() -> bytes:
    """6000 x 6000 lossless WebP of a few KB: 36 M pixels to decode, ~0.4 s of a CPU."""
    buffer = io.BytesIO()
    Image.new("RGB", (6000, 6000), (10, 200, 30)).save(buffer, format="WEBP", lossless=True)
    return buffer.getvalue()


def batch_of(api_url: str, lines: list[dict]) -> requests.Response:
    content = "\n".join(json.dumps(line) for line in lines).encode()
    upload = requests.post(
        api_url + "/v1/files", files={"file": ("b.jsonl", content)}, data={"purpose": "batch"}, timeout=30
    )
    assert upload.status_code == 200, upload.text
    body = {"input_file_id": upload.json()["id"], "endpoint": CHAT, "completion_window": "24h"}
    return requests.post(api_url + "/v1/batches", json=body, timeout=60)


def line(custom_id: str, model: str, *uris: str) -> dict:
    body = {"model": model, "messages": image_message(*uris), "max_tokens": 2, "temperature": 0}
    return {"custom_id": custom_id, "method": "POST", "url": CHAT, "body": body}


def test_a_batch_of_heavy_images_is_taken_in_without_decoding_them(api_url, hostile_worker):
    webp = big_webp()
    assert len(webp) < 20_000
    lines = [line(f"l{i}", hostile_worker, data_uri(webp, "image/webp")) for i in range(35)]
    started = time.monotonic()
    batch = batch_of(api_url, lines)
    took = time.monotonic() - started
    health = requests.get(api_url + "/health", timeout=10)
    assert batch.status_code == 200 and batch.json()["status"] != "failed", batch.text
    print(f"35 lines of 6000² WebPs taken in {took:.2f} s")
    assert took < API_SECONDS, took
    assert health.json()["status"] == "ok"
    requests.post(f"{api_url}/v1/batches/{batch.json()['id']}/cancel", timeout=30)


def test_a_refused_line_stores_none_of_its_images(api_url, hostile_worker, conn):
    first = png((1, 2, 3), size=(33, 17))  # a unique image: stored by no other test
    stored = f"test:blob:{hashlib.sha256(first).hexdigest()}"
    bomb = data_uri(bomb_png())
    batch = batch_of(api_url, [line("refused", hostile_worker, data_uri(first), bomb)])
    assert batch.status_code == 200, batch.text
    view = requests.get(f"{api_url}/v1/batches/{batch.json()['id']}", timeout=30).json()
    assert view["request_counts"]["failed"] == 1
    assert not conn.exists(stored)
    # The same through chat: refused, nothing stored.
    chat = requests.post(
        api_url + CHAT, json={"model": hostile_worker, "messages": image_message(data_uri(first), bomb)}, timeout=30
    )
    assert chat.status_code == 400 and chat.json()["error"]["code"] == "image_too_many_pixels"
    assert not conn.exists(stored)


def test_an_image_only_decoding_finds_broken_is_a_400_from_the_worker(api_url, hostile_worker):
    """A JPEG cut short opens (its header is whole): the worker's decode refuses it, and the
    client gets the 400 the API would have given."""
    jpeg = png((200, 10, 10), size=(256, 256), fmt="JPEG")
    cut = jpeg[: len(jpeg) // 2]
    Image.open(io.BytesIO(cut))  # the header reads: only the decode can tell
    for stream in (False, True):
        response = requests.post(
            api_url + CHAT,
            json={"model": hostile_worker, "messages": image_message(data_uri(cut, "image/jpeg")), "stream": stream},
            timeout=30,
        )
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert error["code"] == "invalid_image" and error["param"] == "messages", error
    ok = client_for(api_url).chat.completions.create(
        model=hostile_worker, messages=image_message(data_uri(jpeg, "image/jpeg")), max_tokens=2
    )
    assert ok.choices[0].finish_reason in ("stop", "length")

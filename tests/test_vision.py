"""Image chat end to end: the openai client → API (image intake, blob store) → a vision
worker in .venv-vision running the tiny random-weight Qwen2.5-VL; every bad image input
gets its own clear 4xx; text chat keeps working beside it."""

from __future__ import annotations

import base64
import io
import json
import os
import struct
import subprocess
import threading
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jsonschema
import openai
import pytest
import requests
from PIL import Image

from api.errors import APIError
from api.images import fetch_remote

from .support import VISION_PYTHON, client_for, wait_until

MODEL = "tiny-vision"


def png(color=(255, 0, 0), size=(64, 64), fmt="PNG") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format=fmt)
    return buffer.getvalue()


def data_uri(data: bytes, media_type: str = "image/png") -> str:
    return f"data:{media_type};base64,{base64.b64encode(data).decode()}"


def image_message(*uris: str, text: str = "What is in the picture?") -> list[dict]:
    parts = [{"type": "image_url", "image_url": {"url": u}} for u in uris]
    return [{"role": "user", "content": [{"type": "text", "text": text}, *parts]}]


@pytest.fixture(scope="module")
def vision_worker(stack, models_dir):
    if not (models_dir / MODEL).exists():
        subprocess.run(
            [str(VISION_PYTHON), "-m", "worker_vision.tiny", str(models_dir / MODEL)], check=True, capture_output=True
        )
    return stack.start_vision_worker(MODEL)


@pytest.fixture(scope="module")
def vclient(api_url, vision_worker) -> openai.OpenAI:
    return client_for(api_url)


def test_the_vision_model_is_listed_with_its_kind(vclient):
    cards = {m.id: m for m in vclient.models.list().data}
    assert cards[MODEL].kind == "vision"
    assert cards[MODEL].context_length == 32768  # tiny-vision's max_position_embeddings


@pytest.mark.parametrize("stream", [False, True])
def test_a_prompt_longer_than_the_context_is_400(vclient, stream):
    with pytest.raises(openai.BadRequestError) as caught:
        vclient.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "x " * 40_000}], max_tokens=2, stream=stream
        )
    assert caught.value.body["code"] == "context_length_exceeded"
    assert "32768" in caught.value.body["message"]


def test_sampling_at_the_edges_of_its_ranges(vclient):
    """Values the API accepts must never fail the engine step (and every job with it)."""
    for extra in ({"seed": -1, "temperature": 1e-300}, {"top_k": 10**9, "temperature": 1, "seed": 2**64 - 1}):
        answer = vclient.chat.completions.create(
            model=MODEL, messages=image_message(data_uri(png())), max_tokens=3, extra_body=extra
        )
        assert answer.usage.completion_tokens >= 1


def test_one_image_non_streamed(vclient):
    answer = vclient.chat.completions.create(
        model=MODEL, messages=image_message(data_uri(png(size=(256, 256)))), max_tokens=8, temperature=0
    )
    assert answer.choices[0].finish_reason in ("stop", "length")
    assert isinstance(answer.choices[0].message.content, str)
    text_only = vclient.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "What is in the picture?"}], max_tokens=1
    )
    # The image's own tokens count: 256 x 256 pixels are 81 tokens for Qwen2.5-VL (14-pixel
    # patches merged 2 x 2), so the prompt is that much longer than the same text alone.
    assert answer.usage.prompt_tokens >= text_only.usage.prompt_tokens + 81
    assert answer.usage.completion_tokens >= 1


def test_two_images_streamed_equal_non_streamed(vclient):
    messages = image_message(data_uri(png()), data_uri(png((0, 0, 255), (40, 30), "JPEG"), "image/jpeg"))
    whole = vclient.chat.completions.create(model=MODEL, messages=messages, max_tokens=10, temperature=0)
    chunks = list(
        vclient.chat.completions.create(
            model=MODEL,
            messages=messages,
            max_tokens=10,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == whole.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert chunks[-1].usage.prompt_tokens == whole.usage.prompt_tokens


def test_stop_and_max_tokens_are_honoured(vclient):
    messages = image_message(data_uri(png()))
    free = vclient.chat.completions.create(model=MODEL, messages=messages, max_tokens=12, temperature=0)
    assert free.usage.completion_tokens <= 12
    text = free.choices[0].message.content
    if len(text) > 3:
        cut = vclient.chat.completions.create(
            model=MODEL, messages=messages, max_tokens=12, temperature=0, stop=[text[2:4]]
        )
        assert text[2:4] not in cut.choices[0].message.content


def test_text_only_chat_with_a_vision_model(vclient):
    answer = vclient.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=3, temperature=0
    )
    assert answer.usage.completion_tokens <= 3


def test_text_chat_keeps_working_beside_vision(vclient, client):
    assert (
        client.chat.completions.create(
            model="tiny-text", messages=[{"role": "user", "content": "hi"}], max_tokens=2, temperature=0
        ).usage.completion_tokens
        == 2
    )


def post(api_url, messages, model=MODEL):
    return requests.post(
        api_url + "/v1/chat/completions", timeout=30, json={"model": model, "messages": messages, "max_tokens": 2}
    )


def truncated_png() -> bytes:
    return png()[:60]


def bomb_png() -> bytes:
    """A real PNG whose header claims 30000 x 30000 pixels (CRC fixed up)."""
    data = bytearray(png())
    ihdr = 8 + 8  # signature, then length + "IHDR"
    data[ihdr : ihdr + 8] = struct.pack(">II", 30000, 30000)
    data[ihdr + 13 : ihdr + 17] = struct.pack(">I", zlib.crc32(bytes(data[ihdr - 4 : ihdr + 13])))
    return bytes(data)


@pytest.mark.parametrize(
    "url, status, code",
    [
        ("data:image/png;base64,@@@not-base64@@@", 400, "invalid_image"),
        ("data:image/gif;base64," + base64.b64encode(b"GIF89a").decode(), 400, "unsupported_image_type"),
        (data_uri(b"this is not an image"), 400, "invalid_image"),
        (data_uri(truncated_png()), 400, "invalid_image"),
        (data_uri(png(fmt="BMP")), 400, "unsupported_image_type"),
        (data_uri(bomb_png()), 400, "image_too_many_pixels"),
        ("data:image/png,rawbytes", 400, "invalid_image"),
        ("ftp://example.com/cat.png", 400, "invalid_image_url"),
        ("file:///etc/passwd", 400, "invalid_image_url"),
        ("https://example.com/cat.png", 400, "remote_images_disabled"),
    ],
)
def test_bad_images_get_clear_errors(api_url, vision_worker, url, status, code):
    response = post(api_url, image_message(url))
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code and error["param"] == "messages"
    assert "Traceback" not in error["message"] and "/" not in error["message"].replace("image/", "")


def test_the_declared_type_does_not_decide_the_format(api_url, vision_worker):
    """A JPEG sent as image/png is checked by decoding, and accepted as the JPEG it is."""
    response = post(api_url, image_message(data_uri(png(fmt="JPEG"), "image/png")))
    assert response.status_code == 200, response.text


def test_too_many_images(api_url, vision_worker):
    response = post(api_url, image_message(*[data_uri(png())] * 9))
    assert response.status_code == 400 and response.json()["error"]["code"] == "too_many_images"


def test_images_for_a_text_model_say_which_models_take_them(api_url, text_worker):
    response = post(api_url, image_message(data_uri(png())), model="tiny-text")
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "images_not_supported"
    assert "text-only" in response.json()["error"]["message"]


def test_limits_are_settings(stack, vision_worker):
    api, url = stack.start_api(MAX_IMAGE_BYTES=2000, ALLOW_REMOTE_IMAGES="true")
    try:
        noisy = Image.frombytes("RGB", (100, 100), os.urandom(30_000))
        buffer = io.BytesIO()
        noisy.save(buffer, format="PNG")
        response = post(url, image_message(data_uri(buffer.getvalue())))
        assert response.status_code == 413 and response.json()["error"]["code"] == "image_too_large"
        assert post(url, image_message(data_uri(png()))).status_code == 200  # a few hundred bytes
        local = post(url, image_message("http://127.0.0.1:9/cat.png"))
        assert local.status_code == 400 and local.json()["error"]["code"] == "image_url_not_allowed"
    finally:
        api.stop()


class _Images(BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/cat.png":
            body = png()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        elif self.path == "/moved.png":
            self.send_response(302)
            self.send_header("Location", "http://169.254.169.254/latest/meta-data")
            self.end_headers()
        else:
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"x" * 50_000)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def image_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Images)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_remote_fetch_pins_the_address_refuses_redirects_and_caps_size(image_server):
    anywhere = lambda address: True  # noqa: E731 (the test server is on loopback)
    assert fetch_remote(image_server + "/cat.png", 10_000, 5, address_ok=anywhere) == png()
    with pytest.raises(APIError) as redirect:
        fetch_remote(image_server + "/moved.png", 10_000, 5, address_ok=anywhere)
    assert "redirect" in redirect.value.message
    with pytest.raises(APIError) as big:
        fetch_remote(image_server + "/big", 10_000, 5, address_ok=anywhere)
    assert big.value.status == 413
    with pytest.raises(APIError) as private:
        fetch_remote(image_server + "/cat.png", 10_000, 5)
    assert private.value.code == "image_url_not_allowed"


def test_a_vision_model_that_cannot_load_is_503_with_the_reason(stack, api_url, text_worker):
    ref = "mlx-community/Qwen2.5-VL-7B-Instruct-4bit"
    proc = stack.start_vision_worker(ref, wait=False)
    try:
        wait_until(
            lambda: (
                requests.get(api_url + "/health", timeout=5).json()["workers"]
                and any(
                    w["model"] == ref and w["state"] == "error"
                    for w in requests.get(api_url + "/health", timeout=5).json()["workers"]
                )
            ),
            60,
            "the vision worker in state error",
        )
        response = post(api_url, image_message(data_uri(png())), model=ref)
        assert response.status_code == 503
        assert response.json()["error"]["code"] == "model_unavailable"
        assert "cache" in response.json()["error"]["message"]
        assert proc.alive()
        assert post(api_url, [{"role": "user", "content": "hi"}], model="tiny-text").status_code == 200
    finally:
        proc.stop()


def test_a_vision_answer_follows_its_json_schema(vclient):
    """Issue 14: the vision engine enforces `response_format` with the same grammar as text."""
    schema = {
        "type": "object",
        "properties": {"color": {"enum": ["red", "green", "blue"]}, "count": {"type": "integer", "minimum": 0,
                                                                             "maximum": 9}},
        "required": ["color", "count"],
        "additionalProperties": False,
    }  # fmt: skip
    fmt = {"type": "json_schema", "json_schema": {"name": "seen", "schema": schema, "strict": True}}
    for stream in (False, True):
        args = dict(model=MODEL, messages=image_message(data_uri(png())), response_format=fmt, max_tokens=300,
                    temperature=1.0, seed=3)  # fmt: skip
        if stream:
            chunks = list(vclient.chat.completions.create(**args, stream=True))
            text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        else:
            text = vclient.chat.completions.create(**args).choices[0].message.content
        jsonschema.validate(json.loads(text), schema)


def test_a_request_has_a_pixel_budget_across_its_images(stack, vision_worker):
    """Hardening III, case 3: eight lossless 6000×6000 WebPs (1.4 KB each) passed the
    per-image limit and cost a vision worker 17 s; one request's images now share a budget
    (MAX_REQUEST_PIXELS), checked before anything is stored."""
    _, url = stack.start_api(MAX_REQUEST_PIXELS=64 * 64 * 2)
    client = client_for(url)
    two = image_message(data_uri(png(size=(64, 64))), data_uri(png(size=(64, 64))))
    answer = client.chat.completions.create(model=MODEL, messages=two, max_tokens=1)
    assert answer.usage.completion_tokens == 1
    with pytest.raises(openai.BadRequestError) as refused:
        three = image_message(*[data_uri(png(size=(64, 64)))] * 3)
        client.chat.completions.create(model=MODEL, messages=three, max_tokens=1)
    assert refused.value.body["code"] == "too_many_pixels"

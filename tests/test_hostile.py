"""What a hostile or careless client sends (Hardening II, cases 5 and 9, and their neighbours),
against the live API: every one is a 4xx with OpenAI's error shape — never a 5xx, a trace or a
hang — and the server serves normally afterwards."""

from __future__ import annotations

import json
import select
import socket
import time
from urllib.parse import urlsplit

import pytest
import requests

CHAT = "/v1/chat/completions"


def chat_body(**fields) -> dict:
    return {"model": "tiny-text", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2,
            "temperature": 0, **fields}  # fmt: skip


def error_of(response: requests.Response, status: int) -> dict:
    assert response.status_code == status, (response.status_code, response.text[:300])
    error = response.json()["error"]
    assert error["message"] and "Traceback" not in error["message"] and "/work/" not in error["message"]
    return error


def raw_exchange(url: str, request: bytes, *, timeout: float = 20) -> bytes:
    """Send bytes as they are (for framing no HTTP library will write), a piece at a time,
    stopping early when the server has answered; returns the answer."""
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=timeout) as sock:
        for start in range(0, len(request), 1 << 16):
            if select.select([sock], [], [], 0)[0]:
                break  # answered (and about to close): read it rather than write into a reset
            try:
                sock.sendall(request[start : start + (1 << 16)])
            except OSError:
                break
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


@pytest.mark.parametrize("body, param", [
    (chat_body(messages=[{"role": "user", "content": "a\ud800b"}]), "messages.0.content"),
    (chat_body(messages=[{"role": "user", "content": [{"type": "text", "text": "x\udfff"}]}]),
     "messages.0.content.0.text"),
    (chat_body(stream=True, messages=[{"role": "user", "content": "\ud83d"}]), "messages.0.content"),
    (chat_body(stop=["\udc00"]), "stop.0"),
])  # fmt: skip
def test_lone_surrogates_are_a_400_naming_the_field(api_url, text_worker, body, param):
    data = json.dumps(body)  # json escapes the surrogate as \\ud800: valid JSON, invalid text
    response = requests.post(api_url + CHAT, data=data, headers={"Content-Type": "application/json"}, timeout=30)
    error = error_of(response, 400)
    assert error["param"] == param and error["code"] == "invalid_value"


@pytest.mark.parametrize("path", [CHAT, "/v1/documents", "/v1/batches"])
@pytest.mark.parametrize(
    "data", ["[" * 990 + "]" * 990, '{"a":' * 5000 + "1" + "}" * 5000, '{"model": [[[', "{" * 100000]
)
def test_deep_or_unbalanced_json_is_a_400(api_url, path, data):
    response = requests.post(api_url + path, data=data, headers={"Content-Type": "application/json"}, timeout=30)
    assert error_of(response, 400)["code"] == "invalid_json"


def test_model_names_over_the_limit_are_a_400_everywhere(api_url, text_worker):
    long, longer = "m" * 256, "m" * 257
    for name in (long, longer, f"org/{long}"):
        assert error_of(requests.post(api_url + CHAT, json=chat_body(model=name), timeout=30), 400)["param"] == "model"
        for action in ("load", "unload"):
            admin = requests.post(f"{api_url}/admin/{action}", params={"model_path": name}, timeout=30)
            assert error_of(admin, 400)["param"] == "model_path"
        document = requests.post(api_url + "/v1/documents", json={"model": name, "images": ["AAAA"]}, timeout=30)
        assert error_of(document, 400)["param"] == "model"
    missing = requests.post(api_url + CHAT, json=chat_body(model="m" * 255), timeout=30)
    assert error_of(missing, 404)["code"] == "model_not_found"


@pytest.mark.parametrize("fields, param", [
    ({"max_tokens": True}, "max_tokens"), ({"stream": "true"}, "stream"), ({"temperature": "0.5"}, "temperature"),
    ({"logprobs": 1}, "logprobs"), ({"messages": [{"role": "user", "content": [{"type": "audio"}]}]},
                                    "messages.0.content"),
])  # fmt: skip
def test_types_are_strict(api_url, text_worker, fields, param):
    error = error_of(requests.post(api_url + CHAT, json=chat_body(**fields), timeout=30), 400)
    assert error["param"] == param
    if param == "messages.0.content":
        assert "text or image_url" in error["message"]


def test_bad_chunked_framing_is_a_400_and_an_oversized_chunked_body_a_413(api_url):
    host = urlsplit(api_url).netloc
    head = f"POST {CHAT} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
    bad = raw_exchange(
        api_url, (head + "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\nzz\r\n{}\r\n0\r\n\r\n").encode()
    )
    assert bad.startswith(b"HTTP/1.1 400"), bad[:200]
    big = b"x" * (16 * 1024 * 1024 + 256 * 1024)  # the session API allows 16 MiB
    pieces = [big[i : i + (1 << 20)] for i in range(0, len(big), 1 << 20)]
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces)
    over = raw_exchange(
        api_url, (head + "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n").encode() + chunks + b"0\r\n\r\n"
    )
    assert over.startswith(b"HTTP/1.1 413"), over[:200]
    assert b'"request_too_large"' in over


@pytest.fixture(scope="module")
def impatient_api(stack):
    api, url = stack.start_api(BODY_READ_TIMEOUT="2")
    yield url
    api.stop()


def test_a_body_that_arrives_too_slowly_is_a_408(impatient_api):
    host = urlsplit(impatient_api).netloc
    parts = urlsplit(impatient_api)
    started = time.monotonic()
    with socket.create_connection((parts.hostname, parts.port), timeout=20) as sock:
        sock.sendall(f"POST {CHAT} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                     "Content-Length: 100000\r\nConnection: close\r\n\r\n{".encode())  # fmt: skip
        answer = b""
        try:
            for _ in range(10):  # a byte a second, as the attack did
                sock.sendall(b" ")
                time.sleep(1)
        except OSError:
            pass  # the server has answered and closed
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert b'"request_timeout"' in answer and time.monotonic() - started < 15


def test_a_batch_file_with_a_bom_is_read(api_url, text_worker):
    line = json.dumps({"custom_id": "a", "method": "POST", "url": CHAT, "body": chat_body()})
    upload = requests.post(api_url + "/v1/files", files={"file": ("b.jsonl", "\ufeff".encode() + line.encode())},
                           data={"purpose": "batch"}, timeout=30)  # fmt: skip
    assert upload.status_code == 200, upload.text
    batch = requests.post(api_url + "/v1/batches", json={"input_file_id": upload.json()["id"], "endpoint": CHAT,
                                                         "completion_window": "24h"}, timeout=30)  # fmt: skip
    assert batch.status_code == 200 and batch.json()["status"] != "failed", batch.text


def test_batch_metadata_is_bounded_and_bad_document_images_are_named(api_url, text_worker):
    line = json.dumps({"custom_id": "a", "method": "POST", "url": CHAT, "body": chat_body()})
    upload = requests.post(api_url + "/v1/files", files={"file": ("b.jsonl", line.encode())}, data={"purpose": "batch"},
                           timeout=30).json()  # fmt: skip
    for metadata in ({f"k{i}": "v" for i in range(17)}, {"k" * 65: "v"}, {"k": "v" * 513}):
        batch = requests.post(api_url + "/v1/batches", json={"input_file_id": upload["id"], "endpoint": CHAT,
                              "completion_window": "24h", "metadata": metadata}, timeout=30)  # fmt: skip
        assert error_of(batch, 400)["param"] == "metadata"
    document = requests.post(api_url + "/v1/documents", json={"model": "tiny-vision", "images": ["%%%"]}, timeout=30)
    error = error_of(document, 400)
    assert error["param"] == "images" and "an image is not valid base64" in error["message"]


def test_the_server_is_healthy_afterwards(api_url, text_worker):
    assert requests.get(api_url + "/health", timeout=10).json()["status"] == "ok"
    reply = requests.post(api_url + CHAT, json=chat_body(), timeout=30)
    assert reply.status_code == 200 and reply.json()["usage"]["completion_tokens"] == 2


def test_control_tokens_never_reach_the_answer_text(client, models_dir):
    """Hardening III, case 5: a model that emits `<|im_start|>` (forced here by a bias) shows
    no markup; the tokens still count."""
    from transformers import PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(models_dir / "tiny-text" / "tokenizer.json"))
    special = tokenizer.convert_tokens_to_ids("<|im_start|>")
    assert isinstance(special, int) and special >= 0
    answer = client.chat.completions.create(
        model="tiny-text", messages=[{"role": "user", "content": "hi"}], max_tokens=3, temperature=0,
        logit_bias={str(special): 100},
    )  # fmt: skip
    assert answer.usage.completion_tokens == 3 and "<|" not in (answer.choices[0].message.content or "")

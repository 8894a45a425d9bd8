"""Hardening III, "interactive first, for real": a render bomb and a 20k-token document page
on the tiny vision worker, and an image chat sent beside them still gets its first token
within a few seconds (it waited 17 s behind the bomb and 83 s behind such a page).

The render runs in the worker's side thread (contract/done.Later), never in the admission
loop that admits the chat; the page's prompt is read a chunk per engine step, the shortest
waiting prompt first (worker_vision/engine.py), so the chat's prompt goes before the page's.
"""

from __future__ import annotations

import json
import random
import threading
import time

import pytest
import requests
from rq.job import Job

from .pdfs import render_bomb
from .support import alias, client_for, wait_until
from .test_documents import MODEL, docs_worker, submit  # noqa: F401  (docs_worker builds the tiny model)
from .test_hostile_images import big_webp
from .test_vision import data_uri, image_message, png

FIRST_TOKEN_WITHIN = 5.0
"""Seconds (the issue's figure); measured 0.3–1 s on a 2-core CPU box."""


@pytest.mark.usefixtures("docs_worker")
def test_an_image_chat_is_answered_beside_a_render_bomb_and_a_long_page(api_url, stack, models_dir, conn):
    model = alias(models_dir, "tiny-vision-busy", MODEL)
    worker = stack.start_vision_worker(model, RENDER_PAGE_TIMEOUT=600)
    try:
        bomb = submit(api_url, render_bomb(depth=9), model=model).json()["id"]  # minutes of pdfium

        def status(doc: str) -> str:
            return requests_get(api_url, f"/v1/documents/{doc}")["status"]

        wait_until(lambda: status(bomb) == "rendering", 30, "the render bomb's render")

        # A page whose prompt is ~19,500 tokens of the tiny tokenizer: ~40 s of prefill here.
        rng = random.Random(0)
        long_prompt = "".join(rng.choice("abcdefghij0123456789 .,") for _ in range(20_000))
        page_doc = submit(
            api_url, png(), filename="page.png", mime="image/png", model=model, prompt=long_prompt
        ).json()["id"]
        record = f"test:document:{page_doc}"
        wait_until(lambda: conn.hget(record, "page_jobs"), 30, "the page job")
        page_job = json.loads(conn.hget(record, "page_jobs"))[0]

        def page_started():
            entries = conn.xrange(f"test:stream:{page_job}", count=1)
            return json.loads(entries[0][1][b"data"]) if entries else None

        start = wait_until(page_started, 30, "the page's prefill")
        assert start["prompt_tokens"] > 19_000
        time.sleep(1.0)  # well into the page's prefill

        waited = first_token_after(api_url, model)
        print(f"image chat's first token after {waited:.2f} s beside a render bomb and a 19.5k-token page")
        assert waited < FIRST_TOKEN_WITHIN, waited
        # Both were still at it: the chat did not merely come after them.
        assert status(bomb) == "rendering" and status(page_doc) == "running"

        render_job = json.loads(conn.hget(f"test:document:{bomb}", "render_job"))
        requests_delete(api_url, f"/v1/documents/{bomb}")
        deleted = time.monotonic()
        wait_until(lambda: Job.fetch(render_job, connection=conn).get_status() == "finished", 5, "the render's end")
        stopped = time.monotonic() - deleted
        print(f"render stopped {stopped:.2f} s after DELETE")
        assert stopped < 1.0
        requests_delete(api_url, f"/v1/documents/{page_doc}")
        assert status(page_doc) == "canceled"
    finally:
        worker.stop()


@pytest.mark.usefixtures("docs_worker")
def test_an_image_chat_is_answered_beside_clients_sending_the_heaviest_images(api_url, stack, models_dir):
    """Case 3: eight 6000² WebPs per request cost 17 s of the worker (a chat waited 45 s behind
    three such clients). Now a request holds at most two (MAX_REQUEST_PIXELS), the worker
    decodes each once and box-reduces it to what the model reads before its processor runs."""
    model = alias(models_dir, "tiny-vision-heavy", MODEL)
    worker = stack.start_vision_worker(model)
    heavy = data_uri(big_webp(), "image/webp")
    answered: list[str] = []

    def heavy_client() -> None:
        answer = client_for(api_url).chat.completions.create(
            model=model, messages=image_message(heavy, heavy), max_tokens=4, temperature=0
        )
        answered.append(answer.choices[0].finish_reason)

    clients = [threading.Thread(target=heavy_client) for _ in range(3)]
    try:
        for client in clients:
            client.start()
        time.sleep(0.3)  # their requests are queued before the chat
        waited = first_token_after(api_url, model)
        print(f"image chat's first token after {waited:.2f} s beside three clients of two 6000² WebPs each")
        assert waited < FIRST_TOKEN_WITHIN, waited
        for client in clients:
            client.join(60)
        assert len(answered) == 3
    finally:
        worker.stop()


def first_token_after(api_url: str, model: str) -> float:
    """Seconds from sending a small image chat to its first token."""
    sent = time.monotonic()
    stream = client_for(api_url).chat.completions.create(
        model=model, messages=image_message(data_uri(png((0, 200, 0)))), max_tokens=4, temperature=0, stream=True
    )
    next(c for c in stream if c.choices and c.choices[0].delta.content is not None)
    waited = time.monotonic() - sent
    for _ in stream:  # the chat ends normally
        pass
    return waited


def requests_get(api_url: str, path: str) -> dict:
    return requests.get(api_url + path, timeout=10).json()


def requests_delete(api_url: str, path: str) -> None:
    requests.delete(api_url + path, timeout=10)

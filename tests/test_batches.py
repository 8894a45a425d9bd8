"""The OpenAI Batch API through the official client: files.create → batches.create →
batches.retrieve → files.content, with text and vision lines on the tiny workers' batch
queues, a line for a model nobody serves in the error file, a malformed file, and cancel."""

from __future__ import annotations

import io
import json
import subprocess

import openai
import pytest
import requests

from .support import VISION_PYTHON, alias, client_for, wait_until
from .test_vision import data_uri, image_message, png

VISION = "tiny-vision-batch"


@pytest.fixture(scope="module")
def batch_client(stack, models_dir, api_url, text_worker) -> openai.OpenAI:
    if not (models_dir / "tiny-vision").exists():
        subprocess.run(
            [str(VISION_PYTHON), "-m", "worker_vision.tiny", str(models_dir / "tiny-vision")],
            check=True,
            capture_output=True,
        )
    alias(models_dir, VISION, "tiny-vision")
    stack.start_vision_worker(VISION)
    return client_for(api_url)


def jsonl(lines: list[dict]) -> io.BytesIO:
    buffer = io.BytesIO("".join(json.dumps(line) + "\n" for line in lines).encode())
    buffer.name = "requests.jsonl"
    return buffer


def line(custom_id: str, model: str, messages=None, max_tokens: int = 4) -> dict:
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {
            "model": model,
            "messages": messages or [{"role": "user", "content": "hi"}],
            "max_tokens": max_tokens,
            "temperature": 0,
        },
    }


def wait_batch(client: openai.OpenAI, batch_id: str, timeout: float = 90):
    return wait_until(
        lambda: (
            (b := client.batches.retrieve(batch_id)).status in ("completed", "failed", "cancelled", "expired") and b
        ),
        timeout,
        f"batch {batch_id}",
        0.3,
    )


def test_a_batch_round_trip_with_text_and_vision_lines(batch_client):
    upload = batch_client.files.create(
        file=jsonl(
            [
                line("a", "tiny-text"),
                line("b", "tiny-text", max_tokens=2),
                line("c", VISION, image_message(data_uri(png()))),
                line("d", "no-such-model"),
            ]
        ),
        purpose="batch",
    )
    assert upload.purpose == "batch" and upload.bytes > 0
    batch = batch_client.batches.create(
        input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h", metadata={"run": "test"}
    )
    assert batch.status == "in_progress" and batch.request_counts.total == 4
    batch = wait_batch(batch_client, batch.id)
    assert batch.status == "completed", batch
    assert (batch.request_counts.completed, batch.request_counts.failed) == (3, 1)
    assert batch.metadata == {"run": "test"} and batch.completed_at >= batch.created_at
    output = [json.loads(x) for x in batch_client.files.content(batch.output_file_id).text.splitlines()]
    assert [o["custom_id"] for o in output] == ["a", "b", "c"]
    for entry in output:
        assert entry["id"].startswith("batch_req_") and entry["error"] is None
        assert entry["response"]["status_code"] == 200
        body = entry["response"]["body"]
        assert body["object"] == "chat.completion" and body["usage"]["completion_tokens"] >= 1
    assert output[1]["response"]["body"]["usage"]["completion_tokens"] <= 2
    errors = [json.loads(x) for x in batch_client.files.content(batch.error_file_id).text.splitlines()]
    assert [(e["custom_id"], e["response"]["status_code"], e["response"]["body"]["error"]["code"]) for e in errors] == [
        ("d", 404, "model_not_found")
    ]


def test_a_malformed_file_fails_the_batch_with_its_lines(batch_client):
    bad = [
        line("x", "tiny-text"),
        {"custom_id": "y", "method": "POST", "url": "/v1/embeddings", "body": {}},
        line("x", "tiny-text"),
        {**line("z", "tiny-text"), "body": {"model": "tiny-text", "messages": []}},
    ]
    upload = batch_client.files.create(file=jsonl(bad), purpose="batch")
    batch = batch_client.batches.create(
        input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    assert batch.status == "failed"
    assert [(e.line, e.code) for e in batch.errors.data] == [
        (2, "invalid_url"),
        (3, "duplicate_custom_id"),
        (4, "invalid_value"),
    ]


def test_unknown_ids_and_bad_requests(batch_client):
    with pytest.raises(openai.NotFoundError):
        batch_client.batches.retrieve("batch_nope")
    with pytest.raises(openai.NotFoundError):
        batch_client.files.content("file-nope")
    with pytest.raises(openai.NotFoundError):
        batch_client.batches.create(input_file_id="file-nope", endpoint="/v1/chat/completions", completion_window="24h")
    with pytest.raises(openai.BadRequestError):
        batch_client.files.create(file=jsonl([line("a", "tiny-text")]), purpose="fine-tune")


def test_cancel_ends_the_batch_with_what_finished(batch_client):
    upload = batch_client.files.create(
        file=jsonl([line(str(i), "tiny-text", max_tokens=200) for i in range(6)]), purpose="batch"
    )
    batch = batch_client.batches.create(
        input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    cancelled = batch_client.batches.cancel(batch.id)
    assert cancelled.status == "cancelled" and cancelled.cancelled_at
    counts = cancelled.request_counts
    assert counts.total == 6 and counts.completed + counts.failed == 6
    errors = batch_client.files.content(cancelled.error_file_id).text.splitlines()
    assert len(errors) == counts.failed >= 1
    # Hardening II, case 6: a line cancelled before it finished says so, as OpenAI writes them
    # (no response), rather than a 500 typed invalid_request_error.
    for entry in map(json.loads, errors):
        if entry["response"] is None:
            assert entry["error"]["code"] == "batch_cancelled"
        else:
            assert (
                entry["response"]["status_code"] != 500 or entry["response"]["body"]["error"]["type"] == "server_error"
            )


def test_batches_are_listed_newest_first_in_pages(batch_client, api_url, conn, keys):
    """`GET /v1/batches` (OpenAI's list, the client's auto-paging): newest first, `after`
    pages, an expired batch drops out of the list."""
    made = []
    for _ in range(3):  # malformed files: the batch fails at once, which is all a list needs
        upload = batch_client.files.create(
            file=jsonl([line("x", "tiny-text"), line("x", "tiny-text")]), purpose="batch"
        )
        made.append(batch_client.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions",
                                                completion_window="24h").id)  # fmt: skip
    page = batch_client.batches.list(limit=2)
    assert [b.id for b in page.data] == made[::-1][:2] and page.has_more
    rest = batch_client.batches.list(limit=2, after=page.data[-1].id)
    assert rest.data[0].id == made[0]
    every = [b.id for b in batch_client.batches.list(limit=1)]  # auto-paging through `after`
    assert every[:3] == made[::-1]
    conn.delete(keys.batch(made[1]))  # as if its RESULTS_TTL had run out
    assert made[1] not in [b.id for b in batch_client.batches.list(limit=100)]
    for bad in ("0", "101", "x", "١"):
        assert requests.get(f"{api_url}/v1/batches", params={"limit": bad}, timeout=10).status_code == 400

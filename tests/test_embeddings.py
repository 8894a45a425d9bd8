"""`/v1/embeddings` end to end (issue 17): the official client against the API, a real
embedding worker process and a tiny random BERT; the vectors' arithmetic is checked against an
independent numpy forward pass in tests/test_bert.py, here what a client sees."""

from __future__ import annotations

import base64
import json
import shutil
import struct
import threading
import time

import numpy as np
import openai
import pytest
import requests

from .support import client_for

MODEL = "tiny-embed"
SENTENCES = ["The quick brown fox.", "A red square on a white page.", "Invoice 2024-0117, total 1,234.56 EUR.", "hi"]


@pytest.fixture(scope="module")
def embed_model(models_dir):
    from worker_embedding.tiny import build

    if not (models_dir / MODEL).exists():
        build(models_dir / MODEL)
    return MODEL


@pytest.fixture(scope="module")
def embed_worker(stack, embed_model):
    return stack.start_embedding_worker(embed_model)


@pytest.fixture(scope="module")
def eclient(api_url, embed_worker) -> openai.OpenAI:
    return client_for(api_url)


def vectors(answer) -> np.ndarray:
    return np.array([d.embedding for d in sorted(answer.data, key=lambda d: d.index)], dtype=np.float64)


def test_the_model_is_listed_with_its_kind(api_url, embed_worker):
    models = {m["id"]: m for m in requests.get(api_url + "/v1/models", timeout=10).json()["data"]}
    assert models[MODEL]["kind"] == "embedding"


def test_one_string_a_list_and_token_ids(eclient, models_dir):
    one = eclient.embeddings.create(model=MODEL, input=SENTENCES[0])
    assert one.object == "list" and one.model == MODEL and len(one.data) == 1
    assert one.data[0].object == "embedding" and one.data[0].index == 0
    assert one.usage.prompt_tokens > 0 and one.usage.total_tokens == one.usage.prompt_tokens
    many = eclient.embeddings.create(model=MODEL, input=SENTENCES)
    got = vectors(many)
    assert [d.index for d in many.data] == list(range(len(SENTENCES)))
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)  # unit length
    # In input order: each row is that sentence's vector alone.
    for i, sentence in enumerate(SENTENCES):
        alone = vectors(eclient.embeddings.create(model=MODEL, input=sentence))[0]
        assert float(alone @ got[i]) > 1 - 1e-5, i
    # Token ids: the same vectors as the text they spell.
    from worker_embedding.bert import load_encoder

    ids = load_encoder(models_dir / MODEL).tokenize(SENTENCES[:2])
    by_ids = vectors(eclient.embeddings.create(model=MODEL, input=ids))
    assert np.allclose(by_ids, got[:2], atol=1e-5)
    single = vectors(eclient.embeddings.create(model=MODEL, input=ids[0]))  # one input as a list of ids
    assert np.allclose(single[0], got[0], atol=1e-5)


def test_base64_is_the_same_floats(eclient, api_url):
    """The official client asks for base64 and decodes it when the caller leaves the format
    out; over plain HTTP both formats give the same numbers."""
    by_client = vectors(eclient.embeddings.create(model=MODEL, input=SENTENCES[:2]))

    def over_http(encoding_format: str) -> list[dict]:
        body = {"model": MODEL, "input": SENTENCES[:2], "encoding_format": encoding_format}
        return requests.post(api_url + "/v1/embeddings", json=body, timeout=30).json()["data"]

    floats = np.array([d["embedding"] for d in over_http("float")])
    dims = floats.shape[1]
    decoded = np.array([struct.unpack(f"<{dims}f", base64.b64decode(d["embedding"])) for d in over_http("base64")])
    assert np.allclose(decoded, floats, atol=1e-6) and np.allclose(by_client, floats, atol=1e-6)
    raw = eclient.embeddings.create(model=MODEL, input=SENTENCES[:2], encoding_format="base64")
    assert isinstance(raw.data[0].embedding, str)  # asked for explicitly: left to the caller


def test_dimensions_only_for_models_trained_for_it(eclient, models_dir, stack, api_url):
    full = vectors(eclient.embeddings.create(model=MODEL, input=SENTENCES[0]))[0]
    same = vectors(eclient.embeddings.create(model=MODEL, input=SENTENCES[0], dimensions=full.size))[0]
    assert np.allclose(same, full, atol=1e-6)
    with pytest.raises(openai.BadRequestError) as refused:
        eclient.embeddings.create(model=MODEL, input=SENTENCES[0], dimensions=8)
    assert refused.value.body["param"] == "dimensions" and "not trained" in refused.value.body["message"]
    # A copy that says it was trained with Matryoshka dimensions 8 and 16.
    matryoshka = models_dir / "tiny-embed-matryoshka"
    if not matryoshka.exists():
        shutil.copytree(models_dir / MODEL, matryoshka)
        config = matryoshka / "config_sentence_transformers.json"
        data = json.loads(config.read_text()) if config.exists() else {}
        config.write_text(json.dumps({**data, "matryoshka_dimensions": [8, 16]}))
    worker = stack.start_embedding_worker(matryoshka.name)
    try:
        cut = vectors(client_for(api_url).embeddings.create(model=matryoshka.name, input=SENTENCES[0], dimensions=8))[0]
        assert cut.size == 8 and abs(np.linalg.norm(cut) - 1) < 1e-5
        prefix = full[:8] / np.linalg.norm(full[:8])
        assert np.allclose(cut, prefix, atol=1e-5)
    finally:
        worker.stop()


@pytest.mark.parametrize(
    "body, status, param",
    [
        ({"input": ""}, 400, "input"),
        ({"input": []}, 400, "input"),
        ({"input": ["ok", ""]}, 400, "input"),
        ({"input": [[]]}, 400, "input"),
        ({"input": [1, -2]}, 400, "input"),
        ({"input": [True]}, 400, "input"),
        ({"input": {"text": "x"}}, 400, "input"),
        ({"input": ["x"] * 2049}, 400, "input"),
        ({"input": "x", "encoding_format": "hex"}, 400, "encoding_format"),
        ({"input": "x", "dimensions": 0}, 400, "dimensions"),
        ({"input": "x", "temperature": 1}, 400, "temperature"),
        ({"input": [[10**9]]}, 400, "input"),
        ({"input": "word " * 400}, 400, "input"),
    ],
)
def test_bad_inputs_are_clear_400s(api_url, embed_worker, body, status, param):
    answer = requests.post(api_url + "/v1/embeddings", json={"model": MODEL, **body}, timeout=30)
    assert answer.status_code == status, answer.text
    error = answer.json()["error"]
    assert error["param"] == param, error
    assert error["message"] and "Traceback" not in error["message"]


def test_a_long_input_names_its_index(api_url, embed_worker):
    answer = requests.post(
        api_url + "/v1/embeddings", json={"model": MODEL, "input": ["ok", "word " * 400]}, timeout=30
    )
    error = answer.json()["error"]
    assert answer.status_code == 400 and error["code"] == "context_length_exceeded" and "input 1" in error["message"]


def test_kinds_route_and_refuse_with_the_fix(api_url, embed_worker, text_worker):
    chat = requests.post(
        api_url + "/v1/chat/completions", json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}]},
        timeout=30,
    )  # fmt: skip
    assert chat.status_code == 400 and chat.json()["error"]["code"] == "wrong_model_kind"
    assert "/v1/embeddings" in chat.json()["error"]["message"]
    embed = requests.post(api_url + "/v1/embeddings", json={"model": "tiny-text", "input": "hi"}, timeout=30)
    assert embed.status_code == 400 and embed.json()["error"]["code"] == "wrong_model_kind"
    unknown = requests.post(api_url + "/v1/embeddings", json={"model": "nope-embed", "input": "hi"}, timeout=30)
    assert unknown.status_code == 404


def test_a_single_query_is_not_stuck_behind_two_thousand_chunks(eclient, api_url):
    chunks = [f"chunk {i}: " + "lorem ipsum dolor sit amet " * (1 + i % 5) for i in range(2000)]
    big: dict = {}

    def embed_many():
        started = time.monotonic()
        big["answer"] = eclient.embeddings.create(model=MODEL, input=chunks)
        big["took"] = time.monotonic() - started

    thread = threading.Thread(target=embed_many)
    thread.start()
    time.sleep(0.5)
    started = time.monotonic()
    query = eclient.embeddings.create(model=MODEL, input="where is the invoice?")
    took = time.monotonic() - started
    thread.join(300)
    assert len(query.data) == 1
    assert len(big["answer"].data) == 2000 and [d.index for d in big["answer"].data] == list(range(2000))
    print(f"query {took:.2f} s beside 2,000 chunks ({big['took']:.1f} s)")
    assert took < big["took"] / 2, (took, big["took"])


def test_an_embedding_batch_file(eclient, models_dir):
    """`/v1/embeddings` lines in a batch file: each line's vectors as a direct request gives
    them; a line for a chat model goes to the error file with the fix named."""
    from .support import wait_until

    lines = [
        {"custom_id": "a", "method": "POST", "url": "/v1/embeddings", "body": {"model": MODEL, "input": SENTENCES}},
        {"custom_id": "b", "method": "POST", "url": "/v1/embeddings",
         "body": {"model": MODEL, "input": "hi", "encoding_format": "base64"}},
        {"custom_id": "c", "method": "POST", "url": "/v1/embeddings", "body": {"model": "tiny-text", "input": "x"}},
    ]  # fmt: skip
    upload = eclient.files.create(file=("e.jsonl", "\n".join(json.dumps(x) for x in lines).encode()), purpose="batch")
    batch = eclient.batches.create(input_file_id=upload.id, endpoint="/v1/embeddings", completion_window="24h")
    done = wait_until(
        lambda: (b := eclient.batches.retrieve(batch.id)).status in ("completed", "failed") and b, 120, "the batch"
    )
    assert done.status == "completed", done
    assert done.request_counts.completed == 2 and done.request_counts.failed == 1
    out = {x["custom_id"]: x for x in map(json.loads, eclient.files.content(done.output_file_id).text.splitlines())}
    body = out["a"]["response"]["body"]
    got = np.array([d["embedding"] for d in body["data"]])
    assert np.allclose(got, vectors(eclient.embeddings.create(model=MODEL, input=SENTENCES)), atol=1e-5)
    assert isinstance(out["b"]["response"]["body"]["data"][0]["embedding"], str)  # base64 as asked
    errors = [json.loads(x) for x in eclient.files.content(done.error_file_id).text.splitlines()]
    assert errors[0]["custom_id"] == "c" and errors[0]["response"]["status_code"] == 400
    assert errors[0]["response"]["body"]["error"]["code"] == "wrong_model_kind"

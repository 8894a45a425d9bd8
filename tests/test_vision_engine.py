"""VisionEngine over a tiny random-weight Qwen2.5-VL, driven directly (no Redis, no API).

mlx-vlm lives in its own venv (.venv-vision, `make install-vision`), not in the test venv, so
the engine runs in a child process of that venv: the script below builds the tiny model,
drives the engine and prints what it saw as JSON; the tests here judge it.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
VISION_PYTHON = ROOT / ".venv-vision/bin/python"

SCRIPT = r'''
import io, json, sys, time, types
from pathlib import Path
from PIL import Image

start = time.perf_counter()
import mlx.core as mx
from mlx_vlm.generate import stream_generate

from runtime.rejections import RequestRejected
from contract.modelref import ModelLoadError
from contract.settings import Settings
from worker_vision import engine as vision_engine
from worker_vision import jobs as vision_jobs
from worker_vision.engine import TextStream, VisionEngine
from worker_vision.loading import load_vision_model
from worker_vision.tiny import build

models = Path(sys.argv[1])
build(models / "tiny-vision")
built = time.perf_counter()
engine = VisionEngine(load_vision_model("tiny-vision", Settings(models_dir=str(models))))


def png(size, colour):
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="PNG")
    return buf.getvalue()


BLOBS = {"a" * 64: png((64, 64), (255, 0, 0)), "b" * 64: png((40, 30), (0, 128, 255)),
         "c" * 64: png((2, 500), (0, 0, 0))}
# The job function reads blobs through rq's current job: a stand-in connection serves them.
import contract.context
contract.context.get_current_job = lambda: types.SimpleNamespace(
    connection=types.SimpleNamespace(get=lambda key: BLOBS.get(key.rsplit(":", 1)[-1])))


def image(digest):
    return {"type": "image", "blob": digest * 64, "media_type": "image/png", "width": 64, "height": 64}


def text(t):
    return {"type": "text", "text": t}


def request(content, max_tokens=12, **extra):
    payload = {"model": "tiny-vision", "messages": [{"role": "user", "content": content}],
               "max_tokens": max_tokens, "sampling": {"temperature": 0}, **extra}
    prepared = vision_jobs.chat(payload)  # a Future while its images decode
    return prepared.result() if hasattr(prepared, "result") else prepared


def run(requests):
    """Add every request at once, step until all finish: per job its start, text, done."""
    seen = {job_id: {"start": engine.add(job_id, r), "text": "", "deltas": 0, "logprobs": [], "done": []}
            for job_id, r in requests.items()}
    steps = 0
    while engine.sequences:
        events, finished = engine.step()
        steps += 1
        ROWS.append(max((len(b) for b in engine.batches), default=0))
        for job_id, kind, data in events:
            s = seen[job_id]
            if kind == "delta":
                s.setdefault("first_step", steps)
                s["deltas"] += 1
                s["text"] += data["text"]
                s["logprobs"] += data.get("logprobs", [])
            elif kind == "done":
                s["done"].append(data)
        for job_id, usage in finished.items():
            seen[job_id]["result"] = usage
        assert steps < 500, "runaway"
    return seen


ROWS = []
"""The decode batch's size after each step."""


class RecordingTextStream(TextStream):
    """Also keeps the token ids the engine emits, to compare with mlx-vlm's."""

    def __init__(self, processor):
        super().__init__(processor)
        self.ids = []
        RECORDED.append(self.ids)

    def add(self, token):
        self.ids.append(token)
        return super().add(token)


RECORDED = []
vision_engine.TextStream = RecordingTextStream


def reference_ids(r, n):
    """Greedy ids from mlx-vlm's own generate_step on the prompt the engine made, with the
    log-probabilities in float32 as the engine computes them (a bfloat16 tie would pick
    another token for reasons that have nothing to do with the engine)."""
    p = engine._encode(r)
    in_float32 = [lambda _, logits: logits.astype(mx.float32)]
    results = stream_generate(engine.vm.model, engine.vm.processor, "", input_ids=p.input_ids,
                              pixel_values=p.pixel_values, mask=p.mask, **p.extra, max_tokens=n,
                              temperature=0.0, logits_processors=in_float32)
    return [g.token for g in results][:n]


def engine_ids(r):
    RECORDED.clear()
    run({"ref": r})
    return RECORDED[0]


def rejection(job_id, r):
    try:
        engine.add(job_id, r)
    except RequestRejected as exc:
        return {"code": exc.code, "message": str(exc)}
    return None


one = lambda: request([text("Describe this image."), image("a")])
two = lambda: request([image("a"), text("Compare it with"), image("b")])
out = {"build_s": built - start}
out["alone_one"] = run({"one": one()})["one"]
out["alone_two"] = run({"two": two()})["two"]
out["together"] = run({"one": one(), "two": two()})
four = lambda: {"a": one(), "b": two(), "c": request("Describe this image."),
                "d": request([image("b"), text("What colour is it?")], max_tokens=16)}
out["four_alone"] = {k: run({k: r})[k] for k, r in four().items()}
ROWS.clear()
out["four_together"] = run(four())
out["four_rows"] = max(ROWS)
whole = engine
engine = VisionEngine(whole.vm, batched=False)  # VISION_BATCH=0: a forward pass per job
ROWS.clear()
out["four_interleaved"] = run(four())
out["interleaved_rows"] = max(ROWS)
engine = whole
out["text_only"] = run({"t": request("Describe this image.")})["t"]
contents = ([text("Describe this image."), image("a")], [image("a"), text("Compare it with"), image("b")],
            "Describe this image.")
out["reference"] = [(engine_ids(request(c, max_tokens=24)), reference_ids(request(c, max_tokens=24), 24))
                    for c in contents]
out["two_text_only"] = run({"t": request([text("Compare it with")])})["t"]

greedy = out["alone_one"]["text"]
stop = next(greedy[i:i + 3] for i in range(2, len(greedy) - 3) if greedy[i:i + 3].strip())
out["stop"] = {"stop": stop, "expected": greedy[:greedy.find(stop)],
               **run({"s": request([text("Describe this image."), image("a")], stop=[stop])})["s"]}

engine.add("r", one())
for _ in range(4):  # the first step reads the prompt (all but its last token, then that), three emit a token each
    engine.step()
out["removed"] = engine.remove(["r", "unknown"])
out["left"] = sorted(engine.sequences)

# Prefill in chunks of 8 tokens, one chunk a step, the shortest waiting prompt first.
out["short_alone"] = run({"h": request("Hi")})["h"]
whole = engine
engine = VisionEngine(whole.vm, prefill_chunk=8)
out["chunked"] = run({"one": one(), "h": request("Hi")})
engine = whole

huge = Image.new("RGB", (6000, 4000), (9, 9, 9))
out["shrunk"] = [list(vision_jobs.shrink(huge, p).size) for p in (200_704, 12_845_056, None)]

out["logprobs"] = run({"l": request([image("a")], max_tokens=4, logprobs=True, top_logprobs=3)})["l"]
no_eos = {str(i): -100.0 for i in engine.vm.eos_token_ids}  # sampling must not end early
seeded = lambda seed: request([image("b"), text("Tell")], max_tokens=10,
                              sampling={"temperature": 1.0, "top_p": 0.9, "seed": seed, "logit_bias": no_eos})
out["seeded_alone"] = run({"x": seeded(7)})["x"]
out["seeded_together"] = run({"x": seeded(7), "y": seeded(8)})["x"]
out["penalties"] = run({"p": request([image("a")], sampling={
    "temperature": 0.7, "top_k": 5, "min_p": 0.05, "repetition_penalty": 1.3, "presence_penalty": 0.5,
    "frequency_penalty": 0.5, "logit_bias": {"7": 5.0}})})["p"]["done"]

out["too_many_images"] = rejection("m", request([image("a")] * (engine.max_images + 1)))
out["bad_image"] = rejection("bad", request([image("c")]))
out["bad_bias"] = rejection("bias", request("hi", sampling={"logit_bias": {"100000": 1.0}}))
sample = "Zürich Привет, 語の🙂テ日"  # not in the tokenizer's corpus: split mid-character
stream = TextStream(engine.vm.processor)
out["utf8_pieces"] = [stream.add(t) for t in engine.vm.tokenizer.encode(sample)] + [stream.finish()]
out["utf8_sample"] = sample
engine.vm.context_length = 40
out["too_long"] = rejection("long", request([text("Describe this image."), image("a")]))
out["left_after_rejections"] = sorted(engine.sequences)


def load_refusal(name, config):
    (models / name).mkdir()
    if config is not None:
        (models / name / "config.json").write_text(json.dumps(config))
    try:
        load_vision_model(name, Settings(models_dir=str(models)))
    except ModelLoadError as exc:
        return str(exc)
    return None


out["refused_loads"] = [load_refusal("no-config", None), load_refusal("text-only", {"model_type": "llama"}),
                        load_refusal("other-vlm", {"model_type": "mllama", "vision_config": {}})]
out["total_s"] = time.perf_counter() - start
print(json.dumps(out))
'''


@pytest.fixture(scope="module")
def seen(tmp_path_factory) -> dict:
    assert VISION_PYTHON.exists(), "the vision venv is missing: run `make install-vision`"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run(
        [str(VISION_PYTHON), "-c", SCRIPT, str(tmp_path_factory.mktemp("models"))],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def check_finished(job: dict, max_tokens: int = 12) -> None:
    assert len(job["done"]) == 1
    done = job["done"][0]
    usage = done["usage"]
    assert done["finish_reason"] in ("stop", "length")
    assert usage == job["result"]
    assert usage["prompt_tokens"] == job["start"]["prompt_tokens"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert 1 <= usage["completion_tokens"] <= max_tokens
    if done["finish_reason"] == "length":
        assert usage["completion_tokens"] == max_tokens


def test_jobs_with_images_stream_and_finish(seen):
    for job in (seen["alone_one"], seen["alone_two"], *seen["together"].values()):
        assert job["start"]["cached_tokens"] == 0
        assert job["deltas"] >= 1 and job["text"]
        check_finished(job)


def test_prompt_tokens_count_the_images(seen):
    # Each image adds its start and end markers and at least one image token.
    assert seen["alone_one"]["start"]["prompt_tokens"] >= seen["text_only"]["start"]["prompt_tokens"] + 3
    assert seen["alone_two"]["start"]["prompt_tokens"] >= seen["two_text_only"]["start"]["prompt_tokens"] + 6


def test_interleaved_jobs_decode_as_if_alone(seen):
    assert seen["together"]["one"]["text"] == seen["alone_one"]["text"]
    assert seen["together"]["two"]["text"] == seen["alone_two"]["text"]
    assert seen["together"]["one"]["done"] == seen["alone_one"]["done"]


def test_four_jobs_decode_in_one_batch_as_if_alone(seen):
    # One forward pass per step for all four (two images, one, none, another), each row
    # greedy-equal to its job alone: prompts of different lengths, left-padded in the batch.
    assert seen["four_rows"] == 4 and seen["interleaved_rows"] == 1
    for key, alone in seen["four_alone"].items():
        for together in (seen["four_together"][key], seen["four_interleaved"][key]):
            assert together["text"] == alone["text"] and together["done"] == alone["done"], key


def test_text_streams_token_by_token_in_whole_characters(seen):
    assert seen["alone_one"]["deltas"] >= 6  # not held back until a space
    pieces = seen["utf8_pieces"]
    assert "".join(pieces) == seen["utf8_sample"]
    assert not any("\ufffd" in p for p in pieces)
    assert "" in pieces[:-1]  # a character split over tokens was held back, not broken
    assert sum(1 for p in pieces if p) >= 10


def test_decoding_matches_mlx_vlm_generate(seen):
    # Same prompt, same greedy ids: the engine's own positions (mRoPE with images) and
    # chunked prefill agree with mlx-vlm's single-sequence path.
    for mine, reference in seen["reference"]:
        assert len(mine) == 24
        assert mine == reference


def test_prompts_are_read_in_chunks_the_shortest_first(seen):
    chunked = seen["chunked"]
    long, short = chunked["one"], chunked["h"]
    # The same answers as read in one chunk, alone.
    assert long["text"] == seen["alone_one"]["text"] and long["done"] == seen["alone_one"]["done"]
    assert short["text"] == seen["short_alone"]["text"]

    # About 8 prompt tokens a step (a piece is at most 8: all but the last token in pieces,
    # then the last alone), the shortest prompt first: the short one (added second) starts
    # first, and the long one's first token comes once both are read, no later.
    total = long["start"]["prompt_tokens"] + short["start"]["prompt_tokens"]
    assert short["first_step"] < long["first_step"] <= -(-total // 8) + 1


def test_huge_images_are_reduced_to_what_the_model_reads(seen):
    # By a whole factor, never below the processor's max_pixels; untouched when within 4x of it.
    reduced, kept, unknown = seen["shrunk"]
    assert reduced == [6000 // 10, 4000 // 10] and reduced[0] * reduced[1] >= 200_704
    assert kept == unknown == [6000, 4000]


def test_text_only_request(seen):
    check_finished(seen["text_only"])
    assert seen["text_only"]["text"]


def test_stop_string_never_reaches_the_client(seen):
    stop = seen["stop"]
    assert stop["stop"] not in stop["text"]
    assert stop["text"] == stop["expected"]
    assert stop["done"][0]["finish_reason"] == "stop"


def test_remove_returns_tokens_generated(seen):
    assert seen["removed"] == {"r": 3}
    assert seen["left"] == []


def test_logprobs(seen):
    job = seen["logprobs"]
    check_finished(job, max_tokens=4)
    assert len(job["logprobs"]) == 4
    for entry in job["logprobs"]:
        assert entry["logprob"] <= 0 and len(entry["top_logprobs"]) == 3
        tops = [t["logprob"] for t in entry["top_logprobs"]]
        assert tops == sorted(tops, reverse=True)
        assert entry["logprob"] == pytest.approx(tops[0])  # greedy picks the top token


def test_seeded_sampling_is_private_to_the_job(seen):
    alone, together = seen["seeded_alone"], seen["seeded_together"]
    check_finished(alone, max_tokens=10)
    assert alone["done"][0]["usage"]["completion_tokens"] == 10
    assert alone["text"] and alone["text"] == together["text"]


def test_penalties_and_filters_run(seen):
    assert seen["penalties"][0]["finish_reason"] in ("stop", "length")


def test_models_the_engine_cannot_serve_are_refused_at_load(seen):
    no_config, text_only, other = seen["refused_loads"]
    assert "no config.json" in no_config
    assert "not a vision-language model" in text_only
    assert "'mllama'" in other and "cross-attention" in other and "qwen2_5_vl" in other


def test_rejections(seen):
    assert seen["too_many_images"]["code"] == "invalid_value"
    assert seen["bad_image"]["code"] == "invalid_value"
    assert "aspect ratio" in seen["bad_image"]["message"]
    assert seen["bad_bias"]["code"] == "invalid_value"
    assert seen["too_long"]["code"] == "context_length_exceeded"
    assert seen["left_after_rejections"] == []

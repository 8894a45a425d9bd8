"""Every vision family the worker serves (issue 16), each as a tiny random model of its own:
the engine's greedy output equals mlx-vlm's own `stream_generate` on the same prompt — one
image, two images, none — and four jobs decoding in one batch equal their answers alone; and
through the whole stack (images as PNG data URIs, streamed and not) the answer is the text of
mlx-vlm's tokens.

mlx-vlm lives in its own venv, so the engine runs in a child process of it (as in
tests/test_vision_engine.py); the script prints what it saw as JSON and the tests judge it.
The engine reads prompts in mlx-vlm's own split (all but the last token, then the last) so
the same arithmetic gives the same numbers; mlx-vlm's log-probabilities are taken in float32,
as the engine's are (a bfloat16 near-tie would pick another token for no fault of either).
"""

from __future__ import annotations

import json
import os
import subprocess

import pytest
import requests

from .support import ROOT, VISION_PYTHON, client_for
from .test_vision import data_uri, png

FAMILIES = {  # served model_type → (builder module, flavor or None)
    "qwen2_5_vl": ("worker_vision.tiny", None),
    "qwen2_vl": ("worker_vision.tiny_qwen", "qwen2_vl"),
    "qwen3_vl": ("worker_vision.tiny_qwen", "qwen3_vl"),
    "gemma3": ("worker_vision.tiny_gemma3", None),
    "smolvlm": ("worker_vision.tiny_idefics3", "smolvlm"),
    "idefics3": ("worker_vision.tiny_idefics3", "idefics3"),
    "llava": ("worker_vision.tiny_llava", "llava"),
    "mistral3": ("worker_vision.tiny_llava", "mistral3"),
}

SCRIPT = r'''
import importlib, io, json, sys, time
from pathlib import Path
from PIL import Image
import mlx.core as mx
from mlx_vlm.generate import stream_generate

from contract.payloads import ChatJob
from contract.settings import Settings
from worker_vision import engine as vision_engine
from worker_vision.engine import TextStream, VisionEngine
from worker_vision.jobs import VisionRequest
from worker_vision.loading import load_vision_model

models, families = Path(sys.argv[1]), json.loads(sys.argv[2])
RECORDED = []


class RecordingTextStream(TextStream):
    def __init__(self, processor):
        super().__init__(processor)
        self.ids = []
        RECORDED.append(self.ids)

    def add(self, token):
        self.ids.append(token)
        return super().add(token)


vision_engine.TextStream = RecordingTextStream
IMAGES = {"red": Image.new("RGB", (64, 48), (220, 30, 30)), "blue": Image.new("RGB", (40, 72), (20, 60, 230))}


def request(content, max_tokens=12):
    """content: a list of "text..." strings and image names, in order."""
    parts = [{"type": "image", "blob": "a" * 64, "media_type": "image/png", "width": 1, "height": 1} if c in IMAGES
             else {"type": "text", "text": c} for c in content]
    job = ChatJob.model_validate({"model": "m", "messages": [{"role": "user", "content": parts}],
                                  "max_tokens": max_tokens, "sampling": {"temperature": 0}})
    return VisionRequest(job, [IMAGES[c] for c in content if c in IMAGES])


def run(engine, requests):
    RECORDED.clear()
    order = list(requests)
    for job_id in order:
        engine.add(job_id, requests[job_id])
    rows = 0
    while engine.sequences:
        engine.step()
        rows = max([rows] + [len(b) for b in engine.batches])
    return dict(zip(order, RECORDED)), rows


def reference(engine, r, n):
    p = engine._encode(r)
    in_float32 = [lambda _, logits: logits.astype(mx.float32)]
    results = stream_generate(engine.vm.model, engine.vm.processor, "", input_ids=p.input_ids,
                              pixel_values=p.pixel_values, mask=p.mask, **p.extra, max_tokens=n,
                              temperature=0.0, logits_processors=in_float32)
    return [g.token for g in results][:n], p.length


CONTENTS = {"one": ["red", "Describe this image."], "two": ["red", "Compare it with", "blue"],
            "none": ["Describe a red square."], "after": ["What is in the picture?", "blue"]}  # as below
out = {}
for family, (module, flavor) in families.items():
    start = time.perf_counter()
    builder = importlib.import_module(module)
    kwargs = {"flavor": flavor} if flavor else {}
    builder.build(models / f"family-{family}", **kwargs)
    vm = load_vision_model(f"family-{family}", Settings(models_dir=str(models)))
    engine = VisionEngine(vm, prefill_chunk=2048)
    seen = {"model_type": vm.model_type}
    for name, content in CONTENTS.items():
        mine = run(engine, {name: request(content)})[0][name]
        ref, length = reference(engine, request(content), 12)
        # Its text as a stream of those ids reads (a random model emits stray byte tokens,
        # whose U+FFFD renderings differ between a streaming decode and tokenizer.decode).
        stream = TextStream(vm.processor)
        text = "".join(stream.add(t) for t in ref) + stream.finish()
        seen[name] = {"mine": mine, "reference": ref, "prompt_tokens": length, "text": text}
    alone = {name: run(engine, {name: request(c, 16)})[0][name] for name, c in CONTENTS.items()}
    together, rows = run(engine, {name: request(c, 16) for name, c in CONTENTS.items()})
    seen["batch"] = {"alone": alone, "together": together, "rows": rows}
    seen["seconds"] = time.perf_counter() - start
    out[family] = seen
print(json.dumps(out))
'''


COLOURS = {"red": ((220, 30, 30), (64, 48)), "blue": ((20, 60, 230), (40, 72))}
"""The script's images, as the API gets them (PNG keeps every pixel)."""
CONTENTS = {"one": ["red", "Describe this image."], "two": ["red", "Compare it with", "blue"],
            "none": ["Describe a red square."], "after": ["What is in the picture?", "blue"]}  # fmt: skip


@pytest.fixture(scope="module")
def seen(models_dir) -> dict:
    """Builds the family models under the stack's models directory (family-<type>)."""
    assert VISION_PYTHON.exists(), "the vision venv is missing: run `make install-vision`"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run(
        [str(VISION_PYTHON), "-c", SCRIPT, str(models_dir), json.dumps(FAMILIES)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("family", FAMILIES)
def test_greedy_output_equals_mlx_vlm_generate(seen, family):
    got = seen[family]
    assert got["model_type"] == family
    for case in ("one", "two", "none", "after"):
        assert len(got[case]["mine"]) == 12, (case, got[case])
        assert got[case]["mine"] == got[case]["reference"], case
    # The images reach the model: two images make a longer prompt than one, and none a shorter one.
    assert got["two"]["prompt_tokens"] > got["one"]["prompt_tokens"] > got["none"]["prompt_tokens"]


@pytest.mark.parametrize("family", FAMILIES)
def test_four_jobs_in_one_batch_equal_their_answers_alone(seen, family):
    batch = seen[family]["batch"]
    assert batch["rows"] == 4
    assert batch["together"] == batch["alone"]


def as_openai(content: list[str]) -> list[dict]:
    parts = [
        {"type": "image_url", "image_url": {"url": data_uri(png(*COLOURS[c]))}}
        if c in COLOURS
        else {"type": "text", "text": c}
        for c in content
    ]
    return [{"role": "user", "content": parts}]


@pytest.mark.parametrize("family", FAMILIES)
def test_through_the_stack_the_answer_is_mlx_vlm_s(seen, stack, api_url, family):
    """A worker of each family (reading prompts in mlx-vlm's split: PREFILL_CHUNK=2048): the
    answer, streamed and not, is the text of mlx-vlm's greedy tokens for the same request, and
    its prompt is as long as mlx-vlm's."""
    model = f"family-{family}"
    worker = stack.start_vision_worker(model, PREFILL_CHUNK=2048)
    try:
        client = client_for(api_url)
        for case, content in CONTENTS.items():
            ask = dict(model=model, messages=as_openai(content), max_tokens=12, temperature=0)
            expected = seen[family][case]["text"]
            answer = client.chat.completions.create(**ask)
            assert answer.choices[0].message.content == expected, case
            assert answer.usage.prompt_tokens == seen[family][case]["prompt_tokens"], case
            streamed = "".join(
                c.choices[0].delta.content or ""
                for c in client.chat.completions.create(stream=True, **ask)
                if c.choices
            )
            assert streamed == expected, case
    finally:
        worker.stop()
    assert requests.get(api_url + "/health", timeout=10).ok

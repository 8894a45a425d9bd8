"""The batched-decode reshape (mlx_common/flat_decode.py) changes speed, never output: on the
CPU, layers and whole batched generations give identical results with and without it."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import pytest
from mlx_lm import load

from contract.settings import Settings
from mlx_common.flat_decode import (
    FlatDecodeQuantizedEmbedding,
    FlatDecodeQuantizedLinear,
    flatten_decode,
)
from tests.support import batch_generate
from worker_text.loading import load_text_model
from worker_text.tiny import build, build_twin

PROMPTS = [[5, 17, 42, 99], [7, 8], [300, 301, 302, 303, 304, 305], [11]]


@pytest.fixture(scope="module")
def quantized_dirs(tmp_path_factory):
    """4-bit twins of the tiny model: one with its own output head, one whose head is the
    (quantized) input embedding."""
    root = tmp_path_factory.mktemp("flat")
    dirs = {}
    for name, tied in (("untied", False), ("tied", True)):
        build(root / f"{name}-float", tie_word_embeddings=tied)
        dirs[name] = build_twin(root / f"{name}-float", root / name)
    return dirs


def generate(model, steps: int = 12) -> tuple[list[list[int]], list[mx.array]]:
    return batch_generate(model, PROMPTS, steps)


@pytest.mark.parametrize("name", ["untied", "tied"])
def test_batched_generation_identical(quantized_dirs, name):
    model, _ = load(str(quantized_dirs[name]))
    plain_tokens, plain_logprobs = generate(model)
    assert flatten_decode(model) > 0
    flat_tokens, flat_logprobs = generate(model)
    assert flat_tokens == plain_tokens
    for flat, plain in zip(flat_logprobs, plain_logprobs, strict=True):
        assert mx.array_equal(flat, plain).item()


def test_layers_identical_for_decode_and_prefill_shapes():
    mx.random.seed(3)
    linear = nn.QuantizedLinear.from_linear(nn.Linear(128, 96), group_size=64, bits=4)
    embedding = nn.QuantizedEmbedding.from_embedding(nn.Embedding(50, 128), group_size=64, bits=4)
    inputs = [mx.random.normal((8, 1, 128)), mx.random.normal((3, 5, 128)), mx.random.normal((1, 1, 128))]
    expected = [(linear(x), embedding.as_linear(x)) for x in inputs]
    flatten_decode(linear)
    flatten_decode(embedding)
    assert type(linear) is FlatDecodeQuantizedLinear and type(embedding) is FlatDecodeQuantizedEmbedding
    for x, (want_linear, want_head) in zip(inputs, expected, strict=True):
        got_linear, got_head = linear(x), embedding.as_linear(x)
        assert got_linear.shape == want_linear.shape and got_head.shape == want_head.shape
        assert mx.array_equal(got_linear, want_linear).item()
        assert mx.array_equal(got_head, want_head).item()


def test_float_layers_untouched(tmp_path):
    model, _ = load(str(build(tmp_path / "float")))
    assert flatten_decode(model) == 0


@pytest.mark.parametrize("enabled", [True, False])
def test_setting_switches_it(quantized_dirs, enabled):
    # Quantized layers on the CPU too: dequantizing to float32 (CPU_DEQUANTIZE_MAX_GB) would swap them out.
    settings = Settings(models_dir=str(quantized_dirs["tied"].parent), flat_decode=enabled, cpu_dequantize_max_gb=0)
    text_model = load_text_model("tied", settings)
    kinds = {type(m) for _, m in text_model.model.named_modules()}
    if enabled:
        assert FlatDecodeQuantizedLinear in kinds and nn.QuantizedLinear not in kinds
    else:
        assert nn.QuantizedLinear in kinds and FlatDecodeQuantizedLinear not in kinds

"""Packed q/k/v and gate/up projections (mlx_common/fused_decode.py): anywhere, packing leaves
every output exactly as it was (the layers keep views of the packed weights); on CUDA, decode
steps of 1-8 sequences through the fused kernels match MLX's kernels within 16-bit tolerance."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import pytest
from mlx_lm import load
from mlx_lm.models import qwen2
from mlx_lm.models.cache import make_prompt_cache

from mlx_common import fused_decode
from mlx_common.flat_decode import flatten_decode
from mlx_common.quant_kernels import cuda_device
from worker_text.tiny import build_shaped

needs_cuda = pytest.mark.skipif(not cuda_device(), reason="the kernels are CUDA source: MLX here runs on the CPU")

CONFIG = {  # Qwen2 (q/k/v biases, SwiGLU MLP), small
    "model_type": "qwen2",
    "rms_norm_eps": 1e-6,
    "rope_theta": 1000000.0,
    "max_position_embeddings": 4096,
    "hidden_act": "silu",
    "hidden_size": 256,
    "intermediate_size": 512,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 151936,
    "tie_word_embeddings": False,
}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return build_shaped(tmp_path_factory.mktemp("fused") / "qwen2", CONFIG, bits=4, group_size=64)


def decode_logits(model, rows: int, steps: int = 3) -> mx.array:
    """Logits of a prefill and `steps` decode steps of `rows` sequences, on fixed tokens."""
    mx.random.seed(rows)
    prompts = mx.random.randint(0, 1000, (rows, 5))
    fed = mx.random.randint(0, 1000, (rows, steps))
    cache = make_prompt_cache(model)
    logits = [model(prompts, cache=cache)[:, -1]]
    for i in range(steps):
        logits.append(model(fed[:, i : i + 1], cache=cache)[:, -1])
    return mx.stack(logits).astype(mx.float32)


def test_packing_changes_no_output(model_dir):
    if cuda_device():
        pytest.skip("on CUDA the fused kernels run: the test below compares them")
    model, _ = load(str(model_dir))
    flatten_decode(model, fast=True)  # no CUDA: nothing is packed yet
    before = [decode_logits(model, rows) for rows in (1, 3)]
    assert fused_decode.fuse(model) == 4  # two layers: q/k/v and gate/up each
    mlp = model.model.layers[0].mlp
    assert type(mlp).__name__ == "FusedMLP" and isinstance(mlp, qwen2.MLP)
    assert fused_decode.fuse(model) == 0  # packed once
    after = [decode_logits(model, rows) for rows in (1, 3)]
    for a, b in zip(before, after, strict=True):
        assert mx.array_equal(a, b).item()


def test_only_mlx_lm_swiglu_mlps_are_fused():
    assert fused_decode._fused_mlp(qwen2.MLP) is not None

    class Gelu(nn.Module):
        def __call__(self, x):
            return self.down_proj(nn.gelu(self.gate_proj(x)) * self.up_proj(x))

    assert fused_decode._fused_mlp(Gelu) is None


@needs_cuda
@pytest.mark.parametrize("rows", [1, 2, 3, 4, 5, 8])
def test_fused_decode_matches_mlx(model_dir, rows):
    reference, _ = load(str(model_dir))
    flatten_decode(reference)
    fused, _ = load(str(model_dir))
    fused_decode.prepare_decode(fused, fast=True)  # packs and compiles
    assert type(fused.model.layers[0].mlp).__name__ == "FusedMLP"
    ref, got = decode_logits(reference, rows), decode_logits(fused, rows)
    scale = mx.abs(ref).max().item()
    assert mx.abs(got - ref).max().item() <= 2e-2 * scale

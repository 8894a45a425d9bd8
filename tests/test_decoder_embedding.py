"""Decoder embedding models (worker_embedding/decoder.py): Qwen3-Embedding's layout on mlx-lm's
qwen3 network, checked against an independent numpy Qwen3, then served end to end.

The reference shares no code with the encoder or mlx-lm: its own safetensors reading (numpy),
RMSNorm, per-head q/k norms, rotate-half RoPE, grouped-query causal attention and SwiGLU, in
float64, one unpadded sentence at a time; the encoder runs all sentences in ONE right-padded
batch. Agreement proves the weight renaming (bare `layers.N…` names → mlx-lm's), the dropped
head, last-token and mean pooling over the appended end-of-text token, and that padding and
batch-mates change nothing.
"""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pytest
from safetensors.numpy import load_file

from worker_embedding.decoder import load_decoder
from worker_embedding.sentence_config import UnsupportedModel
from worker_embedding.tiny_decoder import build

from .support import client_for

SENTENCES = [
    "A man is eating food.",
    "Hi",
    "The quick brown fox jumps over the lazy dog, again and again and again and again and again.",
    "Invoice 2024-0117: total 1,234.56 EUR.",
    "Où est la gare ? Ça va bien.",
    "emoji 🙂 and 日本語 become unknown tokens",
]
MODEL = "tiny-qwen3-embed"


def _rms(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w


def _rope(x: np.ndarray, theta: float) -> np.ndarray:
    """Rotate-half RoPE (Hugging Face's Qwen/Llama convention) over (length, heads, dim)."""
    length, _, dim = x.shape
    inv = theta ** (-np.arange(0, dim, 2, dtype=np.float64) / dim)
    angles = np.arange(length, dtype=np.float64)[:, None] * inv[None, :]  # (L, dim/2)
    cos, sin = np.cos(angles)[:, None, :], np.sin(angles)[:, None, :]
    a, b = x[..., : dim // 2], x[..., dim // 2 :]
    return np.concatenate([a * cos - b * sin, a * sin + b * cos], axis=-1)


def reference(path, ids: list[int]) -> np.ndarray:
    """The sentence-transformers vector of one sentence: Qwen3 in numpy, pooled, normalized."""
    config = json.loads((path / "config.json").read_text())
    pooling = json.loads((path / "1_Pooling" / "config.json").read_text())
    w = {k: v.astype(np.float64) for k, v in load_file(str(path / "model.safetensors")).items()}
    eps, heads, kv, dim = (
        config["rms_norm_eps"],
        config["num_attention_heads"],
        config["num_key_value_heads"],
        config["head_dim"],
    )
    h = w["embed_tokens.weight"][ids]
    length = len(ids)
    causal = np.triu(np.full((length, length), -np.inf), 1)
    for i in range(config["num_hidden_layers"]):
        p = f"layers.{i}."
        x = _rms(h, w[p + "input_layernorm.weight"], eps)
        q = _rms(
            (x @ w[p + "self_attn.q_proj.weight"].T).reshape(length, heads, dim), w[p + "self_attn.q_norm.weight"], eps
        )
        k = _rms(
            (x @ w[p + "self_attn.k_proj.weight"].T).reshape(length, kv, dim), w[p + "self_attn.k_norm.weight"], eps
        )
        v = (x @ w[p + "self_attn.v_proj.weight"].T).reshape(length, kv, dim)
        q, k = _rope(q, config["rope_theta"]), _rope(k, config["rope_theta"])
        k, v = np.repeat(k, heads // kv, axis=1), np.repeat(v, heads // kv, axis=1)
        scores = np.einsum("qhd,khd->hqk", q, k) / np.sqrt(dim) + causal
        scores = np.exp(scores - scores.max(-1, keepdims=True))
        attn = np.einsum("hqk,khd->qhd", scores / scores.sum(-1, keepdims=True), v).reshape(length, heads * dim)
        h = h + attn @ w[p + "self_attn.o_proj.weight"].T
        x = _rms(h, w[p + "post_attention_layernorm.weight"], eps)
        gate, up = x @ w[p + "mlp.gate_proj.weight"].T, x @ w[p + "mlp.up_proj.weight"].T
        h = h + (gate / (1 + np.exp(-gate)) * up) @ w[p + "mlp.down_proj.weight"].T
    h = _rms(h, w["norm.weight"], eps)
    pooled = h[-1] if pooling["pooling_mode_lasttoken"] else h.mean(axis=0)
    return pooled / np.linalg.norm(pooled)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("decoders")
    return {
        name: build(root / name, pooling=pooling, layout=layout)
        for name, pooling, layout in [("last", "last", "hf"), ("mean", "mean", "hf"), ("mlx4", "last", "mlx4")]
    }


@pytest.mark.parametrize("name", ["last", "mean"])
def test_vectors_equal_an_independent_numpy_qwen3(built, name):
    encoder = load_decoder(built[name])
    ids = encoder.tokenize(SENTENCES)
    eot = encoder.tokenizer.token_to_id("<|endoftext|>")
    assert all(seq[-1] == eot for seq in ids)  # the tokenizer appends the token last-token pooling reads
    assert max(len(seq) for seq in ids) > 16  # published truncation (16 here) was switched off
    assert "lm_head" not in encoder.model  # the head is never used: not kept
    got = np.array(encoder.embed(ids), dtype=np.float64)  # one right-padded batch
    for i, seq in enumerate(ids):
        cos = float(got[i] @ reference(built[name], seq))
        assert cos > 1 - 1e-5, (i, cos)
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    rounded = dataclasses.replace(encoder, round_shapes=True)  # as on a GPU: pads after, filler rows
    np.testing.assert_allclose(np.array(rounded.embed(ids)), got, atol=1e-5)


def test_a_4bit_mlx_conversion_loads(built):
    """mlx-community's layout: `model.`-prefixed, quantized projections. Its vectors stay near
    the float model's (random weights lose more to 4 bits than trained ones)."""
    ids = load_decoder(built["last"]).tokenize(SENTENCES)
    full = np.array(load_decoder(built["last"]).embed(ids))
    quant = np.array(load_decoder(built["mlx4"]).embed(ids))
    cos = (full * quant).sum(axis=1)
    assert cos.min() > 0.85, cos


def test_a_chat_model_directory_is_not_an_embedding_model(built, tmp_path):
    """Without sentence-transformers' modules.json nothing says how to pool: refused, never guessed."""
    bare = shutil.copytree(built["last"], tmp_path / "bare")
    (bare / "modules.json").unlink()
    with pytest.raises(UnsupportedModel, match="modules.json"):
        load_decoder(bare)


def test_served_end_to_end(stack, api_url, models_dir):
    if not (models_dir / MODEL).exists():
        build(models_dir / MODEL)
    stack.start_embedding_worker(MODEL)
    client = client_for(api_url)
    answer = client.embeddings.create(model=MODEL, input=SENTENCES)
    got = np.array([d.embedding for d in answer.data])
    assert [d.index for d in answer.data] == list(range(len(SENTENCES)))
    ids = load_decoder(models_dir / MODEL).tokenize(SENTENCES)
    assert answer.usage.prompt_tokens == sum(len(seq) for seq in ids)
    for i, seq in enumerate(ids):
        assert float(got[i] @ reference(models_dir / MODEL, seq)) > 1 - 1e-5, i
    too_long = " ".join(["fox"] * 600)
    with pytest.raises(Exception) as refused:
        client.embeddings.create(model=MODEL, input=["Hi", too_long])
    assert getattr(refused.value, "status_code", None) == 400 and "input 1" in str(refused.value)

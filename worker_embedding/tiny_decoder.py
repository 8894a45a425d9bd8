"""`python -m worker_embedding.tiny_decoder OUTDIR`: a tiny random-weight decoder embedding model
(Qwen3-Embedding's layout) for tests.

Laid out as Qwen/Qwen3-Embedding-0.6B is published: config.json of a `qwen3` causal LM with
tied embeddings, model.safetensors holding the bare transformer (`embed_tokens.weight`,
`layers.N…`, `norm.weight`: no `model.` prefix, no head), a tokenizer.json whose post-processor
appends `<|endoftext|>` (the token last-token pooling reads) and that truncates and pads as
published files do, modules.json with Pooling (last token) + Normalize. `--layout mlx4` writes
what an mlx-community 4-bit conversion looks like instead: `model.`-prefixed names, the
projections quantized (group 32) and `quantization` in config.json.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from mlx_common.tiny_models import cli, save_mlx, write_model

from .tiny import build_tokenizer, save_numpy, write_sentence_transformers

SPECIALS = ["<|endoftext|>", "<unk>"]
MAX_POSITIONS, MAX_SEQ_LENGTH = 1024, 512
SHAPES = {"tiny": (64, 2, 4, 2, 16, 128), "qwen3-embedding-0.6b": (1024, 28, 16, 8, 128, 3072)}
"""(hidden, layers, heads, kv heads, head dim, intermediate). `qwen3-embedding-0.6b` is that
model's network in bfloat16, for GPU benchmarks (the vocabulary stays this tokenizer's: the
embedding lookup costs nothing to speak of)."""
LAYOUTS = ("hf", "mlx4")
PROJECTIONS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj")
MLP = ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


def model_config(vocab_size: int, shape: str = "tiny") -> dict:
    hidden, layers, heads, kv, head_dim, inter = SHAPES[shape]
    return {
        "architectures": ["Qwen3ForCausalLM"],
        "model_type": "qwen3",
        "vocab_size": vocab_size,
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv,
        "head_dim": head_dim,
        "intermediate_size": inter,
        "max_position_embeddings": MAX_POSITIONS,
        "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0,
        "tie_word_embeddings": True,
        "hidden_act": "silu",
        "attention_bias": False,
        "eos_token_id": 0,
        "torch_dtype": "float32" if shape == "tiny" else "bfloat16",
    }


def random_weights(config: dict, seed: int) -> dict[str, np.ndarray]:
    """The bare transformer's parameters under Hugging Face names, float32. The tiny model's
    are large (std 0.2) so that a mistake moves vectors well beyond test tolerances; a
    full-size shape gets an initializer's (0.02)."""
    rng = np.random.default_rng(seed)
    hidden, inter, head_dim = config["hidden_size"], config["intermediate_size"], config["head_dim"]
    heads, kv = config["num_attention_heads"] * head_dim, config["num_key_value_heads"] * head_dim
    std = 0.2 if hidden <= 64 else 0.02

    def matrix(*shape: int) -> np.ndarray:
        return rng.normal(0.0, std, shape).astype(np.float32)

    def norm(n: int) -> np.ndarray:
        return (1.0 + rng.normal(0.0, 0.1, n)).astype(np.float32)

    w = {"embed_tokens.weight": matrix(config["vocab_size"], hidden), "norm.weight": norm(hidden)}
    shapes = {"q_proj": (heads, hidden), "k_proj": (kv, hidden), "v_proj": (kv, hidden), "o_proj": (hidden, heads)}
    for i in range(config["num_hidden_layers"]):
        p = f"layers.{i}."
        for name, shape in shapes.items():
            w[f"{p}self_attn.{name}.weight"] = matrix(*shape)
        w[p + "self_attn.q_norm.weight"], w[p + "self_attn.k_norm.weight"] = norm(head_dim), norm(head_dim)
        w[p + "mlp.gate_proj.weight"], w[p + "mlp.up_proj.weight"] = matrix(inter, hidden), matrix(inter, hidden)
        w[p + "mlp.down_proj.weight"] = matrix(hidden, inter)
        w[p + "input_layernorm.weight"], w[p + "post_attention_layernorm.weight"] = norm(hidden), norm(hidden)
    return w


def _quantized(weights: dict[str, np.ndarray], config: dict) -> dict:
    """mlx_lm.convert's output: `model.` names, 4-bit projections (embedding kept), config noted."""
    import mlx.core as mx

    out = {}
    for name, value in weights.items():
        array = mx.array(value)
        if any(f".{p}." in name for p in PROJECTIONS + MLP):
            q, scales, biases = mx.quantize(array, group_size=32, bits=4)
            stem = "model." + name.removesuffix(".weight")
            out[stem + ".weight"], out[stem + ".scales"], out[stem + ".biases"] = q, scales, biases
        else:
            out["model." + name] = array
    config["quantization"] = config["quantization_config"] = {"group_size": 32, "bits": 4}
    return out


def build(out_dir: Path, seed: int = 0, pooling: str = "last", layout: str = "hf", shape: str = "tiny") -> Path:
    """Write the model directory. `pooling`: a key of worker_embedding.tiny.POOLINGS; `layout`:
    `hf` (as Qwen publishes it) or `mlx4` (as mlx-community's 4-bit conversions are); `shape`:
    a key of SHAPES (a full-size one is written in bfloat16, as published)."""

    def make(partial: Path) -> tuple[dict, dict]:
        config = model_config(build_tokenizer(partial, SPECIALS, single="$A <|endoftext|>"), shape)
        write_sentence_transformers(partial, pooling, config["hidden_size"], MAX_SEQ_LENGTH)
        weights = random_weights(config, seed)
        if layout == "mlx4":
            return config, _quantized(weights, config)
        return config, weights if shape == "tiny" else _bfloat16(weights)

    return write_model(out_dir, make, save=save_numpy if layout == "hf" and shape == "tiny" else save_mlx)


def _bfloat16(weights: dict[str, np.ndarray]) -> dict:
    import mlx.core as mx

    return {name: mx.array(value).astype(mx.bfloat16) for name, value in weights.items()}


def main(argv: list[str] | None = None) -> int:
    return cli(
        argv, "worker_embedding.tiny_decoder", __doc__, build, pooling=("last", "mean"), layout=LAYOUTS, shape=SHAPES
    )


if __name__ == "__main__":
    sys.exit(main())

"""A BERT sentence encoder in MLX: what sentence-transformers computes, without torch.

It mirrors Hugging Face's `BertModel` (post-LayerNorm layers, exact erf GELU, absolute
positions, token type 0) followed by sentence-transformers' `Pooling` and `Normalize`
modules, and reads a sentence-transformers model directory as published (config.json,
model.safetensors in HF names, tokenizer.json, modules.json, 1_Pooling/config.json,
sentence_bert_config.json). Neither mlx-lm nor transformers (without torch) can run a BERT
encoder, and the network is small enough to keep here and check against a numpy reference
(tests/test_bert.py).

Nothing is truncated here: `tokenize` returns every token and `embed` refuses sequences
longer than `max_tokens`, so the caller decides whether to refuse or split an input instead
of silently embedding its beginning. Published tokenizer.json files often carry truncation
and padding settings (all-MiniLM-L6-v2's: truncate at 128, pad to 128); they are switched off.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import mlx.core as mx
import mlx.nn as nn
from tokenizers import Tokenizer

from .sentence_config import UnsupportedModel, limit_tokens, open_tokenizer, read_json, read_pooling

RENAMES = (
    # HF name fragment -> ours, applied in order (attention.output.* before the FFN's output.*).
    ("encoder.layer.", "layers."),
    (".attention.self.", ".attention."),
    (".attention.output.dense.", ".attention.out."),
    (".attention.output.LayerNorm.", ".attention_norm."),
    (".intermediate.dense.", ".ffn_in."),
    (".output.dense.", ".ffn_out."),
    (".output.LayerNorm.", ".ffn_norm."),
    ("embeddings.LayerNorm.", "embeddings.norm."),
)


class Attention(nn.Module):
    def __init__(self, hidden: int, heads: int):
        super().__init__()
        self.heads = heads
        self.query, self.key, self.value = (nn.Linear(hidden, hidden) for _ in range(3))
        self.out = nn.Linear(hidden, hidden)

    def __call__(self, x: mx.array, mask: mx.array) -> mx.array:
        batch, length, hidden = x.shape
        q, k, v = (
            p(x).reshape(batch, length, self.heads, -1).transpose(0, 2, 1, 3)
            for p in (self.query, self.key, self.value)
        )
        scale = (hidden // self.heads) ** -0.5
        o = mx.fast.scaled_dot_product_attention(q, k, v, scale=scale, mask=mask)
        return self.out(o.transpose(0, 2, 1, 3).reshape(batch, length, hidden))


class Layer(nn.Module):
    def __init__(self, hidden: int, heads: int, intermediate: int, eps: float):
        super().__init__()
        self.attention = Attention(hidden, heads)
        self.attention_norm = nn.LayerNorm(hidden, eps=eps)
        self.ffn_in = nn.Linear(hidden, intermediate)
        self.ffn_out = nn.Linear(intermediate, hidden)
        self.ffn_norm = nn.LayerNorm(hidden, eps=eps)

    def __call__(self, x: mx.array, mask: mx.array) -> mx.array:
        # Post-LN, as BERT: the residual sum is normalized, not the sublayer's input.
        x = self.attention_norm(x + self.attention(x, mask))
        return self.ffn_norm(x + self.ffn_out(nn.gelu(self.ffn_in(x))))


class Embeddings(nn.Module):
    def __init__(self, config: dict[str, Any]):
        super().__init__()
        hidden = config["hidden_size"]
        self.word_embeddings = nn.Embedding(config["vocab_size"], hidden)
        self.position_embeddings = nn.Embedding(config["max_position_embeddings"], hidden)
        self.token_type_embeddings = nn.Embedding(config.get("type_vocab_size", 2), hidden)
        self.norm = nn.LayerNorm(hidden, eps=config.get("layer_norm_eps", 1e-12))

    def __call__(self, ids: mx.array) -> mx.array:
        # Right padding keeps every real token at the position it has alone. One sentence
        # per input: token type 0 everywhere, as sentence-transformers passes it.
        positions = self.position_embeddings(mx.arange(ids.shape[1]))
        return self.norm(self.word_embeddings(ids) + positions + self.token_type_embeddings.weight[0])


class Bert(nn.Module):
    """BertModel's encoder stack (no pooler: sentence-transformers never uses it)."""

    def __init__(self, config: dict[str, Any]):
        super().__init__()
        eps = config.get("layer_norm_eps", 1e-12)
        self.embeddings = Embeddings(config)
        self.layers = [
            Layer(config["hidden_size"], config["num_attention_heads"], config["intermediate_size"], eps)
            for _ in range(config["num_hidden_layers"])
        ]

    def __call__(self, ids: mx.array, mask: mx.array) -> mx.array:
        x = self.embeddings(ids)
        for layer in self.layers:
            x = layer(x, mask)
        return x


@dataclass
class Encoder:
    """A loaded model: token ids in, pooled (and normalized if configured) vectors out."""

    model: Any
    """Bert here; a subclass's own network (worker_embedding.decoder)."""
    tokenizer: Tokenizer
    pooling: str  # "mean", "cls" or "last"
    normalize: bool
    max_tokens: int
    dimensions: int
    pad_id: int
    round_shapes: bool = False
    """Pad each batch to one of few shapes (see `padded_shape`): set on a GPU, where every new
    (rows, width) costs kernel planning (~15 ms a shape for a Qwen3 network on an H200) and
    padding costs little; on a CPU every padded token is computed, so batches stay tight."""

    @property
    def vocab_size(self) -> int:
        return self.model.embeddings.word_embeddings.weight.shape[0]

    def tokenize(self, texts: list[str]) -> list[list[int]]:
        """Token ids with the tokenizer's special tokens ([CLS] ... [SEP] for BERT), never
        truncated: compare lengths with max_tokens."""
        return [e.ids for e in self.tokenizer.encode_batch(texts, add_special_tokens=True)]

    def hidden(self, ids: mx.array, real: mx.array) -> mx.array:
        """The network's last hidden states (B, L, dimensions) for right-padded `ids`."""
        # Additive key mask, as HF BERT: padded keys get the most negative float, so their
        # softmax weight is exactly 0 and a sentence's vector does not depend on its batch.
        mask = ((1.0 - real) * mx.finfo(mx.float32).min)[:, None, None, :]
        return self.model(ids, mask)

    def embed(self, batch: list[list[int]]) -> mx.array:
        """(len(batch), dimensions) float32 vectors; raises ValueError for an empty or too long sequence."""
        lengths = [len(ids) for ids in batch]
        shortest, longest = min(lengths, default=0), max(lengths, default=0)
        if shortest == 0 or longest > self.max_tokens:
            raise ValueError(f"each sequence needs 1 to {self.max_tokens} tokens, got {shortest} to {longest}")
        rows, width = padded_shape(len(batch), longest, self.max_tokens) if self.round_shapes else (len(batch), longest)
        # Filler rows (one pad token each) only round the batch's shape; they are dropped below.
        lengths += [1] * (rows - len(batch))
        padded = [seq + [self.pad_id] * (width - len(seq)) for seq in batch]
        ids = mx.array(padded + [[self.pad_id] * width] * (rows - len(batch)), dtype=mx.int32)
        real = (mx.arange(width)[None, :] < mx.array(lengths)[:, None]).astype(mx.float32)  # (B, L)
        hidden = self.hidden(ids, real)[: len(batch)]
        real = real[: len(batch)]
        if self.pooling == "cls":
            pooled = hidden[:, 0]
        elif self.pooling == "last":
            pooled = hidden[mx.arange(len(batch)), mx.array(lengths[: len(batch)]) - 1]
        else:
            pooled = (hidden * real[..., None]).sum(axis=1) / real.sum(axis=1, keepdims=True)
        pooled = pooled.astype(mx.float32)  # before normalizing: a bfloat16 norm is off by ~0.5 %
        if self.normalize:  # torch's F.normalize: x / max(|x|, 1e-12)
            pooled = pooled / mx.maximum(mx.linalg.norm(pooled, axis=-1, keepdims=True), 1e-12)
        mx.eval(pooled)
        return pooled


def padded_shape(rows: int, longest: int, max_tokens: int) -> tuple[int, int]:
    """(rows, width) of the batch that holds `rows` sequences of up to `longest` tokens when
    shapes are rounded: rows to a multiple of 8, width to a multiple of 16 (of 64 past 256
    tokens), never past max_tokens. Padding changes no vector: padded keys are masked (BERT) or
    come after every real token (causal decoders), and filler rows are dropped."""
    step = 16 if longest <= 256 else 64
    return -(-rows // 8) * 8, min(max_tokens, -(-longest // step) * step)


def load_encoder(path: Path) -> Encoder:
    """Load a sentence-transformers BERT directory; raises UnsupportedModel for anything else."""
    path = Path(path)
    config = read_json(path / "config.json")
    if config.get("model_type") != "bert":
        raise UnsupportedModel(f"{path}: model_type {config.get('model_type')!r}, only 'bert' is supported")
    if config.get("hidden_act", "gelu") != "gelu" or config.get("position_embedding_type", "absolute") != "absolute":
        raise UnsupportedModel(f"{path}: only hidden_act 'gelu' and absolute position embeddings are supported")
    pooling, normalize = read_pooling(path, default="mean")

    model = Bert(config)
    model.load_weights(list(_hf_weights(path / "model.safetensors").items()), strict=True)

    tokenizer = open_tokenizer(path)
    max_tokens = limit_tokens(path, config["max_position_embeddings"])
    # The pad id never reaches a result (padded keys are masked, padded rows not pooled);
    # it only has to be a valid row of the embedding table.
    pad_id = config.get("pad_token_id") or 0
    return Encoder(model, tokenizer, pooling, normalize, max_tokens, config["hidden_size"], pad_id)


def _hf_weights(file: Path) -> dict[str, mx.array]:
    """The safetensors under our names: `bert.` prefix dropped, pooler and buffers left out,
    floats in float32 (these encoders are small; float16 LayerNorm sums would cost accuracy)."""
    weights = {}
    for name, value in cast(dict[str, mx.array], mx.load(str(file))).items():
        name = name.removeprefix("bert.")
        if name.startswith("pooler.") or name.endswith("position_ids"):
            continue
        for old, new in RENAMES:
            name = name.replace(old, new)
        weights[name] = value.astype(mx.float32)
    return weights

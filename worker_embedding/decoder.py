"""Decoder embedding models (Qwen3-Embedding, gte-Qwen2 and the like) on mlx-lm's architectures.

Such a model is a causal language model whose last hidden states are pooled — usually the last
token's (sentence-transformers' `pooling_mode_lasttoken`), whose tokenizer appends the end-of-text
token for that purpose — then normalized. mlx-lm already has the networks; what it lacks is the
checkpoint layout: Qwen3-Embedding is saved as the bare transformer (`layers.0…`, `embed_tokens…`,
no `model.` prefix and no `lm_head`), so the weights are renamed to mlx-lm's names here and the
language-model head, never used for embeddings, is dropped (for Qwen3-Embedding-8B that is 0.6 G
parameters not held in memory).

Batches are right-padded and run with the plain causal mask: every real token attends only to
the tokens before it, all real, so neither the padding nor the batch changes a vector (pad
positions' states are never pooled). Quantized checkpoints (mlx-community's 4-/8-bit
conversions) load as mlx-lm loads them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn
from mlx_lm.utils import _get_classes, load_model

from .bert import Encoder
from .sentence_config import UnsupportedModel, limit_tokens, open_tokenizer, read_json, read_pooling


class DecoderEncoder(Encoder):
    """Encoder over an mlx-lm model: `model` is the whole mlx-lm Model, its `.model` the
    transformer that returns the final (normed) hidden states."""

    @property
    def vocab_size(self) -> int:
        return self.model.model.embed_tokens.weight.shape[0]

    def hidden(self, ids: mx.array, real: mx.array) -> mx.array:
        del real  # right padding under a causal mask: real tokens never see the pads
        return self.model.model(ids)


def is_decoder(config: dict[str, Any]) -> bool:
    """Whether mlx-lm has a network for this config (and it is not an encoder we run ourselves)."""
    if config.get("model_type") == "bert":
        return False
    try:
        _get_classes(config)
    except (ValueError, KeyError):
        return False
    return True


def _embedding_classes(config: dict) -> tuple[type[nn.Module], type]:
    model_class, args_class = _get_classes(config)

    class Embedder(model_class):  # type: ignore[misc, valid-type]
        """mlx-lm's Model, reading bare-transformer checkpoints and keeping no head."""

        def sanitize(self, weights: dict[str, mx.array]) -> dict[str, mx.array]:
            weights = {k if k.startswith(("model.", "lm_head.")) else f"model.{k}": v for k, v in weights.items()}
            weights = super().sanitize(weights) if hasattr(super(), "sanitize") else weights
            if "lm_head" in self:
                del self["lm_head"]  # pooled hidden states need no vocabulary projection
            return {k: v for k, v in weights.items() if not k.startswith("lm_head.")}

    return Embedder, args_class


def load_decoder(path: Path) -> DecoderEncoder:
    """Load a sentence-transformers decoder model directory; UnsupportedModel for anything else."""
    path = Path(path)
    config = read_json(path / "config.json")
    if not is_decoder(config):
        raise UnsupportedModel(f"{path}: model_type {config.get('model_type')!r} has no network in mlx-lm")
    # A chat model is not an embedding model: only a directory that says how to pool is one.
    pooling, normalize = read_pooling(path, default=None)
    model, config = load_model(path, get_model_classes=_embedding_classes)
    if not isinstance(getattr(model, "model", None), nn.Module):
        raise UnsupportedModel(f"{path}: mlx-lm's {config['model_type']} network has no inner transformer to pool")
    hidden_size = config.get("hidden_size") or config.get("text_config", {}).get("hidden_size")
    positions = config.get("max_position_embeddings") or 32768
    pad_id = config.get("pad_token_id")
    if not isinstance(pad_id, int):
        eos = config.get("eos_token_id")
        pad_id = eos[0] if isinstance(eos, list) else eos if isinstance(eos, int) else 0
    encoder = DecoderEncoder(
        model, open_tokenizer(path), pooling, normalize, limit_tokens(path, positions), hidden_size, pad_id
    )
    probe = encoder.hidden(mx.array([[pad_id, pad_id]], dtype=mx.int32), mx.ones((1, 2)))
    if probe.shape[-1] != hidden_size:
        raise UnsupportedModel(f"{path}: its transformer gives {probe.shape[-1]} values a token, not {hidden_size}")
    return encoder

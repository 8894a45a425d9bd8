"""Model resolution and loading for the embedding worker: a sentence-transformers directory
(under a model root, or a Hugging Face id in the local cache) becomes an `EmbeddingModel`."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from contract.modelref import ModelLoadError, parse_model_ref, resolve
from contract.settings import Settings


@dataclass
class EmbeddingModel:
    model_id: str
    encoder: Any
    """worker_embedding.bert.Encoder (or decoder.DecoderEncoder): tokenize, embed, max_tokens, dimensions."""
    matryoshka: tuple[int, ...] = ()
    """Dimensions the model was trained to be cut to (sentence-transformers' Matryoshka loss);
    empty: its vectors keep their full size (a `dimensions` request is refused)."""


def load_embedding_model(model_ref: str, settings: Settings) -> EmbeddingModel:
    ref = parse_model_ref(model_ref, settings.model_roots)
    path = resolve(ref)
    if not (path / "config.json").is_file():
        raise ModelLoadError(f"{model_ref} has no config.json: not a sentence-transformers model directory")
    # Imported here: they import mlx, kept out of --help.
    from .bert import load_encoder
    from .decoder import is_decoder, load_decoder

    config = json.loads((path / "config.json").read_text())
    decoder = is_decoder(config)
    try:
        encoder = load_decoder(path) if decoder else load_encoder(path)
    except (KeyError, ValueError, FileNotFoundError) as exc:
        what = f"a {config.get('model_type')} decoder embedding model" if decoder else "a BERT sentence encoder"
        raise ModelLoadError(f"{model_ref} could not be loaded as {what}: {exc}") from exc
    import mlx.core as mx

    from mlx_common.arrays import materialize

    materialize(encoder.model)  # its float32 weights are computed here; the engine thread runs it
    encoder.round_shapes = mx.default_device() != mx.cpu
    return EmbeddingModel(model_ref, encoder, _matryoshka(path))


def _matryoshka(path: Path) -> tuple[int, ...]:
    """`matryoshka_dimensions` from the model's sentence-transformers config, if it says."""
    for name in ("config_sentence_transformers.json", "sentence_bert_config.json"):
        try:
            dims = json.loads((path / name).read_text()).get("matryoshka_dimensions")
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(dims, list) and all(isinstance(d, int) and d > 0 for d in dims):
            return tuple(sorted(dims))
    return ()

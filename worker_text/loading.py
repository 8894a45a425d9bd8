"""Model resolution and loading for the text worker.

A reference has been checked by `contract.modelref` (the same check the API applies) and becomes
a directory there (`resolve`); here it is loaded with mlx-lm.
"""

from __future__ import annotations

import json
import logging
from typing import Any, cast

from contract.modelref import ModelLoadError, parse_model_ref, resolve
from contract.settings import Settings
from mlx_common.cpu_blas import describe, on_cpu
from mlx_common.fused_decode import prepare_decode

from .cpu_weights import dequantize_for_cpu
from .model import TextModel

log = logging.getLogger("mis.loading")


def load_text_model(model_ref: str, settings: Settings) -> TextModel:
    from mlx_lm import load

    ref = parse_model_ref(model_ref, settings.model_roots)
    path = resolve(ref)
    if not (path / "config.json").is_file():
        raise ModelLoadError(f"{model_ref} has no config.json: not an mlx-lm model directory")
    # Without return_config, load gives (model, tokenizer); its hint is a union with the 3-tuple.
    model, tokenizer = cast(tuple[Any, Any], load(str(path)))
    # On a CPU: say which BLAS MLX runs on (mlx_common/cpu_blas.py), and take float32 weights
    # where they fit (worker_text/cpu_weights.py) — before flatten_decode, which would swap the
    # quantized layers' classes to ones dequantize_model does not know.
    cpu = on_cpu()
    if cpu:
        log.info(describe())
    dequantized = cpu and dequantize_for_cpu(model, settings.cpu_dequantize_max_gb) is not None
    if settings.flat_decode:
        prepare_decode(model, fast=settings.fast_quant)
    config = json.loads((path / "config.json").read_text())
    return TextModel(
        model_id=model_ref,
        model=model,
        tokenizer=tokenizer,
        context_length=_context_length(config, tokenizer),
        vocab_size=_vocab_size(config, tokenizer),
        path=path,
        dequantized=dequantized,
    )


def _context_length(config: dict, tokenizer) -> int:
    for key in ("max_position_embeddings", "max_sequence_length", "n_ctx", "seq_length"):
        if isinstance(config.get(key), int):
            return config[key]
    limit = getattr(tokenizer, "model_max_length", None)
    return limit if isinstance(limit, int) and limit < 10**7 else 4096


def _vocab_size(config: dict, tokenizer) -> int:
    # Multimodal configs keep text hyper-parameters under text_config.
    size = config.get("vocab_size") or config.get("text_config", {}).get("vocab_size")
    return int(size) if size else len(tokenizer.get_vocab())

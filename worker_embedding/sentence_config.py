"""What a sentence-transformers model directory says beyond its network: which modules follow
the transformer (Pooling, Normalize), how many tokens an input may have, and its tokenizer with
the published truncation and padding switched off. Shared by the BERT and decoder encoders."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer

POOLING_MODES = {"pooling_mode_mean_tokens": "mean", "pooling_mode_cls_token": "cls", "pooling_mode_lasttoken": "last"}
"""sentence-transformers' pooling flags we implement; any other flag set is refused."""
MODULES = {"Transformer", "Pooling", "Normalize"}
"""modules.json entries we know; a Dense or other module would change the vectors: refused."""


class UnsupportedModel(ValueError):
    """The directory is not a model these encoders compute faithfully."""


_MISSING: Any = object()


def read_json(file: Path, default: Any = _MISSING) -> Any:
    if default is not _MISSING and not file.exists():
        return default
    return json.loads(file.read_text())


def read_pooling(path: Path, default: str | None) -> tuple[str, bool]:
    """(pooling, normalize) from modules.json and the Pooling module's config; a directory
    without modules.json gets (`default`, True), or is refused when `default` is None."""
    modules = read_json(path / "modules.json", None)
    if modules is None:
        if default is None:
            raise UnsupportedModel(f"{path}: no modules.json, so not a sentence-transformers embedding model")
        return default, True
    kinds = {m["type"].rsplit(".", 1)[-1]: m for m in modules}
    if unknown := set(kinds) - MODULES:
        raise UnsupportedModel(f"{path}: unsupported sentence-transformers modules {sorted(unknown)}")
    if "Pooling" not in kinds:
        raise UnsupportedModel(f"{path}: modules.json lists no Pooling module")
    flags = read_json(path / kinds["Pooling"]["path"] / "config.json")
    chosen = [k for k, v in flags.items() if k.startswith("pooling_mode_") and v is True]
    if len(chosen) != 1 or chosen[0] not in POOLING_MODES:
        raise UnsupportedModel(f"{path}: pooling {chosen}, supported: exactly one of {sorted(POOLING_MODES)}")
    return POOLING_MODES[chosen[0]], "Normalize" in kinds


def limit_tokens(path: Path, positions: int) -> int:
    """The limit sentence-transformers applies: max_seq_length when the model states one (256
    for all-MiniLM-L6-v2, trained on 128), else the tokenizer's, never more positions than
    the model has. It counts the special tokens the tokenizer adds."""
    stated = read_json(path / "sentence_bert_config.json", {}).get("max_seq_length")
    stated = stated or read_json(path / "tokenizer_config.json", {}).get("model_max_length")
    if isinstance(stated, int) and stated > 0:
        return min(positions, stated)
    return positions


def open_tokenizer(path: Path) -> Tokenizer:
    """tokenizer.json as published, minus its truncation and padding: nothing is cut here, the
    caller compares lengths with the limit and refuses (never embeds a silent beginning)."""
    tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return tokenizer

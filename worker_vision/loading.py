"""Model resolution and loading for the vision worker.

A reference has been checked by `contract.modelref` (the same check the API applies) and becomes
a directory there (`resolve`); here its config is checked before mlx-vlm loads it, so a
model this worker cannot serve fails its load with a clear reason (the worker stays up in
state `error` with that reason in the registry) instead of failing every request.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from contract.modelref import ModelLoadError, parse_model_ref, resolve
from contract.settings import Settings

SUPPORTED_MODEL_TYPES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "gemma3", "idefics3", "smolvlm", "llava", "mistral3")
"""mlx-vlm architectures the engine serves: each tested with a tiny random model of its own
(tests/test_vision_families.py: greedy output equal to mlx-vlm's own generate, alone and four
in one batch). Qwen-VL language models keep their mRoPE offsets on the shared model object;
VisionEngine passes every job's positions explicitly instead. The others place tokens by
their cache offsets, which the batch caches keep per row."""
REFUSED = {
    "mllama": "its language model reads each job's image through cross-attention states, which "
    "the shared decode batch cannot carry yet",
}
"""Architectures known not to fit the engine, and why (others: untested, refused as such)."""
MROPE_TYPES = frozenset({"qwen2_vl", "qwen2_5_vl", "qwen3_vl"})
DEFAULT_CONTEXT = 32768


@dataclass
class VisionModel:
    model_id: str
    model: Any
    """mlx-vlm's Model: `vision_tower`, `language_model`, `get_input_embeddings`."""
    processor: Any
    """The Hugging Face processor mlx-vlm loaded (image processor, tokenizer, chat template)."""
    config: dict
    context_length: int
    vocab_size: int
    """Rows of the output head: may exceed the tokenizer (Qwen pads its vocabulary)."""
    eos_token_ids: frozenset[int] = field(default_factory=frozenset)

    @property
    def model_type(self) -> str:
        return self.config["model_type"]

    @property
    def tokenizer(self):
        return self.processor.tokenizer

    @property
    def mrope(self) -> bool:
        """Qwen-VL's three-axis positions, which the engine passes itself (worker_vision/batch.py)."""
        return self.model_type in MROPE_TYPES

    @property
    def max_pixels(self) -> int | None:
        """Pixels the image processor resizes an image down to (Qwen-VL's `max_pixels`), if it says."""
        value = getattr(getattr(self.processor, "image_processor", None), "max_pixels", None)
        return value if isinstance(value, int) and value > 0 else None

    @property
    def text_vocab_size(self) -> int:
        """Ids the tokenizer can turn into text; the model may score more."""
        return len(self.processor.tokenizer)


def load_vision_model(model_ref: str, settings: Settings) -> VisionModel:
    ref = parse_model_ref(model_ref, settings.model_roots)
    path = resolve(ref)
    config = read_config(model_ref, path)
    from mlx_vlm.utils import load  # imports mlx and transformers: kept out of --help

    from mlx_common.arrays import materialize
    from mlx_common.fused_decode import prepare_decode

    try:
        model, processor = load(str(path))
    except (FileNotFoundError, ValueError) as exc:  # missing weights, unknown classes
        raise ModelLoadError(f"{model_ref} could not be loaded by mlx-vlm: {exc}") from exc
    if not hasattr(processor, "image_processor") or not hasattr(processor, "tokenizer"):
        raise ModelLoadError(f"{model_ref} has no image processor: not a vision-language model")
    if settings.flat_decode:  # batched decode's quantized matmuls read the weights once (CUDA)
        prepare_decode(model.language_model, fast=settings.fast_quant)
    materialize(model)
    return VisionModel(
        model_id=model_ref,
        model=model,
        processor=processor,
        config=config,
        context_length=_context_length(config),
        vocab_size=_vocab_size(config, processor),
        eos_token_ids=_eos_ids(model, processor),
    )


def read_config(model_ref: str, path: Path) -> dict:
    """config.json, refused unless it names a vision-language architecture we serve."""
    config_file = path / "config.json"
    if not config_file.is_file():
        raise ModelLoadError(f"{model_ref} has no config.json: not an mlx-vlm model directory")
    try:
        config = json.loads(config_file.read_text())
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{model_ref} has an unreadable config.json") from exc
    model_type = config.get("model_type") if isinstance(config, dict) else None
    if not isinstance(model_type, str) or "vision_config" not in config:
        raise ModelLoadError(
            f"{model_ref} is not a vision-language model (its config has no model_type and vision_config)"
        )
    if model_type not in SUPPORTED_MODEL_TYPES:
        why = REFUSED.get(model_type, "it has not been tested with this worker's batched engine")
        raise ModelLoadError(
            f"{model_ref} is a {model_type!r} model, which the vision worker does not serve: {why} "
            f"(served: {', '.join(SUPPORTED_MODEL_TYPES)})"
        )
    return config


def _context_length(config: dict) -> int:
    text = config.get("text_config") or {}
    for source in (config, text):
        if isinstance(source.get("max_position_embeddings"), int):
            return source["max_position_embeddings"]
    return DEFAULT_CONTEXT


def _vocab_size(config: dict, processor) -> int:
    size = config.get("vocab_size") or (config.get("text_config") or {}).get("vocab_size")
    return int(size) if size else len(processor.tokenizer)


def _eos_ids(model, processor) -> frozenset[int]:
    """The ids that end a turn: mlx-vlm's stopping criteria (config + generation_config +
    tokenizer), read once here instead of calling the shared object per token."""
    criteria = getattr(processor.tokenizer, "stopping_criteria", None)
    ids = set(getattr(criteria, "eos_token_ids", None) or [])
    configured = getattr(model.config, "eos_token_id", None)
    ids.update(configured if isinstance(configured, list) else [configured] if configured is not None else [])
    if processor.tokenizer.eos_token_id is not None:
        ids.add(processor.tokenizer.eos_token_id)
    return frozenset(int(i) for i in ids)

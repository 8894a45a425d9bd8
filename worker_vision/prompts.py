"""A vision job's messages and images as model inputs: mlx-vlm's chat template (images placed
where each family's template wants them) and its processor (image markers expanded to the
image's tokens, pixels preprocessed)."""

from __future__ import annotations

from dataclasses import dataclass

import mlx.core as mx
from mlx_vlm.prompt_utils import apply_chat_template
from mlx_vlm.utils import prepare_inputs, should_add_special_tokens

from runtime.rejections import RequestRejected

from .jobs import shrink
from .loading import VisionModel

PADDING_REFUSED = frozenset({"llava"})
"""Families whose transformers 5 processor hands mlx-vlm's `padding` argument on to its image
processor, which refuses it (mlx-vlm #870): their images go to the processor directly."""


@dataclass
class Prompt:
    """A request turned into model inputs by mlx-vlm's processor."""

    input_ids: mx.array
    pixel_values: mx.array | None
    mask: mx.array | None
    extra: dict
    """Processor outputs the model needs besides ids and pixels (`image_grid_thw`)."""

    @property
    def length(self) -> int:
        return self.input_ids.shape[1]


def encode(vm: VisionModel, messages: list, images: list) -> Prompt:
    """The chat template with one image marker per image part, in message order; the
    processor expands each marker to the image's tokens and preprocesses the pixels."""
    text = apply_chat_template(
        vm.processor, vm.config, [_template_message(m) for m in messages], num_images=len(images)
    )
    ready = [shrink(image, vm.max_pixels) for image in images]
    add_special = should_add_special_tokens(vm.model_type, vm.processor)
    try:
        if ready and vm.model_type in PADDING_REFUSED:
            out = vm.processor(text=[text], images=ready, return_tensors="np")  # adds its BOS itself
            inputs = {k: mx.array(v) for k, v in out.items()}
        else:
            inputs = prepare_inputs(vm.processor, images=ready or None, prompts=text, add_special_tokens=add_special)
    except ValueError as exc:  # the image processor refused an image (say, a 1 x 400 strip)
        raise RequestRejected(f"an image could not be prepared for this model: {_short(exc)}") from exc
    extra = {k: v for k, v in inputs.items() if k not in ("input_ids", "pixel_values", "attention_mask")}
    return Prompt(inputs["input_ids"], inputs.get("pixel_values"), inputs.get("attention_mask"), extra)


def _template_message(message) -> dict:
    """A message as mlx-vlm's prompt utilities take it: plain text, or its parts in order
    with an image marker where each image goes."""
    if not message.images:
        return {"role": message.role, "content": message.text}
    parts = [{"type": "image"} if p.type == "image" else {"type": "text", "text": p.text} for p in message.content]
    return {"role": message.role, "content": parts}


def _short(exc: Exception, limit: int = 200) -> str:
    text = str(exc).replace("Failed to process inputs with error: ", "")
    return text if len(text) <= limit else text[: limit - 3] + "..."

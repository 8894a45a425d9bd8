"""`python -m worker_vision.tiny_qwen OUTDIR [--flavor qwen3_vl|qwen2_vl]`: tiny random-weight Qwen3-VL
and Qwen2-VL models for tests, siblings of `worker_vision.tiny` (Qwen2.5-VL).

Each is laid out like its mlx-community 4-bit checkpoint (Qwen3-VL-4B-Instruct-4bit,
Qwen2-VL-2B-Instruct-4bit): the family's config.json layout, real chat template, image and video
processor configs and generation_config.json. From tiny.py come the byte-level BPE tokenizer (the
real special tokens, nonsense text) and the weights: mlx-vlm's own Model class with random
bfloat16 weights, the language model 4-bit group 64, the vision tower in full precision, the
untied output head's end-of-turn and padded-vocabulary rows zeroed. `mlx_vlm.utils.load` takes
either through its normal path, offline.

Where the families differ from Qwen2.5-VL (and from each other):
- Qwen3-VL nests the text parameters under `text_config` (model_type `qwen3_vl_text`, an
  explicit `head_dim`, rope_scaling `{rope_type: default, mrope_interleaved: true}`: its mRoPE
  interleaves t/h/w frequencies instead of splitting them into blocks); `mrope_section` still
  sums to half the head size;
- Qwen3-VL's vision tower: patches of 16 (an image token covers 32x32 pixels, not 28x28),
  learned position embeddings (`num_position_embeddings`), no window attention, and
  `deepstack_visual_indexes`: vision blocks whose merged features are added to the hidden
  states of the first text layers at the image tokens. Here [0, 1] within the tiny depth 2, so
  both text layers get one (the real 4B: [5, 11, 17] of 24);
- Qwen3-VL's processor configs give the pixel budget as `size: {shortest_edge, longest_edge}`,
  Qwen2-VL's as `min_pixels`/`max_pixels` (mlx-vlm reads either): an image costs 64..256
  tokens here (Qwen2-VL: 4..256);
- Qwen2-VL keeps the text parameters at the config root like 2.5, but its vision config names
  the tower width `embed_dim` (its `hidden_size` is the text width the merger projects to),
  sizes the MLP by `mlp_ratio` and has no window attention;
- the chat templates: Qwen2-VL's is Qwen2.5-VL's (a default system prompt); Qwen3-VL's has no
  default system prompt and renders tools, tool calls and tool responses. The tokenizer is
  tiny.py's: Qwen3's added `<tool_call>`, `<think>`... tokens are plain text here;
- the real small checkpoints tie the output head to the embedding (Qwen3-VL-4B, Qwen2-VL-2B):
  these untie it like the larger ones (Qwen3-VL-8B, Qwen2-VL-7B), for tiny.py's reason.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from mlx_common.tiny_models import cli, write_model

from .tiny import CHAT_TEMPLATE, TINY, _write_json, build_tokenizer, random_weights

FLAVORS = ("qwen3_vl", "qwen2_vl")
MAX_TOKENS = 256
"""An image's most tokens: max_pixels = MAX_TOKENS * (patch * merge)^2."""
QWEN3_CHAT_TEMPLATE = (  # Qwen3-VL-*-Instruct chat_template.json with its indentation dropped: renders the same
    "{%- if tools %}{{- '<|im_start|>system\\n' }}{%- if messages[0].role == 'system' %}"
    "{%- if messages[0].content is string %}{{- messages[0].content }}{%- else %}"
    "{%- for content in messages[0].content %}{%- if 'text' in content %}{{- content.text }}{%- endif %}"
    "{%- endfor %}{%- endif %}{{- '\\n\\n' }}{%- endif %}"
    '{{- "# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\nYou are '
    'provided with function signatures within <tools></tools> XML tags:\\n<tools>" }}{%- for tool in tools %}'
    '{{- "\\n" }}{{- tool | tojson }}{%- endfor %}'
    '{{- "\\n</tools>\\n\\nFor each function call, return a json object with function name and '
    'arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\"name\\": <function-name>, '
    '\\"arguments\\": <args-json-object>}\\n</tool_call><|im_end|>\\n" }}{%- else %}'
    "{%- if messages[0].role == 'system' %}{{- '<|im_start|>system\\n' }}"
    "{%- if messages[0].content is string %}{{- messages[0].content }}{%- else %}"
    "{%- for content in messages[0].content %}{%- if 'text' in content %}{{- content.text }}{%- endif %}"
    "{%- endfor %}{%- endif %}{{- '<|im_end|>\\n' }}{%- endif %}{%- endif %}"
    "{%- set image_count = namespace(value=0) %}{%- set video_count = namespace(value=0) %}"
    '{%- for message in messages %}{%- if message.role == "user" %}'
    "{{- '<|im_start|>' + message.role + '\\n' }}{%- if message.content is string %}{{- message.content }}"
    "{%- else %}{%- for content in message.content %}"
    "{%- if content.type == 'image' or 'image' in content or 'image_url' in content %}"
    "{%- set image_count.value = image_count.value + 1 %}{%- if add_vision_id %}Picture "
    "{{ image_count.value }}: {% endif -%}<|vision_start|><|image_pad|><|vision_end|>"
    "{%- elif content.type == 'video' or 'video' in content %}"
    "{%- set video_count.value = video_count.value + 1 %}{%- if add_vision_id %}Video {{ video_count.value }}: "
    "{% endif -%}<|vision_start|><|video_pad|><|vision_end|>{%- elif 'text' in content %}{{- content.text }}"
    "{%- endif %}{%- endfor %}{%- endif %}{{- '<|im_end|>\\n' }}{%- elif message.role == \"assistant\" %}"
    "{{- '<|im_start|>' + message.role + '\\n' }}{%- if message.content is string %}{{- message.content }}"
    "{%- else %}{%- for content_item in message.content %}{%- if 'text' in content_item %}"
    "{{- content_item.text }}{%- endif %}{%- endfor %}{%- endif %}{%- if message.tool_calls %}"
    "{%- for tool_call in message.tool_calls %}{%- if (loop.first and message.content) or (not loop.first) %}"
    "{{- '\\n' }}{%- endif %}{%- if tool_call.function %}{%- set tool_call = tool_call.function %}{%- endif %}"
    '{{- \'<tool_call>\\n{"name": "\' }}{{- tool_call.name }}{{- \'", "arguments": \' }}'
    "{%- if tool_call.arguments is string %}{{- tool_call.arguments }}{%- else %}"
    "{{- tool_call.arguments | tojson }}{%- endif %}{{- '}\\n</tool_call>' }}{%- endfor %}{%- endif %}"
    "{{- '<|im_end|>\\n' }}{%- elif message.role == \"tool\" %}"
    "{%- if loop.first or (messages[loop.index0 - 1].role != \"tool\") %}{{- '<|im_start|>user' }}{%- endif %}"
    "{{- '\\n<tool_response>\\n' }}{%- if message.content is string %}{{- message.content }}{%- else %}"
    "{%- for content in message.content %}"
    "{%- if content.type == 'image' or 'image' in content or 'image_url' in content %}"
    "{%- set image_count.value = image_count.value + 1 %}{%- if add_vision_id %}Picture "
    "{{ image_count.value }}: {% endif -%}<|vision_start|><|image_pad|><|vision_end|>"
    "{%- elif content.type == 'video' or 'video' in content %}"
    "{%- set video_count.value = video_count.value + 1 %}{%- if add_vision_id %}Video {{ video_count.value }}: "
    "{% endif -%}<|vision_start|><|video_pad|><|vision_end|>{%- elif 'text' in content %}{{- content.text }}"
    "{%- endif %}{%- endfor %}{%- endif %}{{- '\\n</tool_response>' }}"
    "{%- if loop.last or (messages[loop.index0 + 1].role != \"tool\") %}{{- '<|im_end|>\\n' }}{%- endif %}"
    "{%- endif %}{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}\n"
)


def _mrope_section(head_dim: int, hw_of_64: int) -> list[int]:
    """Sums to half the head size, shared like the real one's: [64 - 2 * hw_of_64, hw_of_64, hw_of_64]
    for a head of 128 (Qwen3-VL: [24, 20, 20], Qwen2-VL: [16, 24, 24])."""
    half = head_dim // 2
    hw = half * hw_of_64 // 64
    return [half - 2 * hw, hw, hw]


def qwen3_vl_config(ids: dict[str, int], vocab: int, shape: dict = TINY) -> dict:
    head_dim = shape["hidden"] // shape["heads"]
    tokens = {"bos_token_id": ids["<|endoftext|>"], "eos_token_id": ids["<|im_end|>"]}
    return {
        "architectures": ["Qwen3VLForConditionalGeneration"],
        "model_type": "qwen3_vl",
        "image_token_id": ids["<|image_pad|>"],
        "video_token_id": ids["<|video_pad|>"],
        "vision_start_token_id": ids["<|vision_start|>"],
        "vision_end_token_id": ids["<|vision_end|>"],
        "tie_word_embeddings": False,
        "text_config": {
            "model_type": "qwen3_vl_text",
            **tokens,
            "attention_bias": False,
            "attention_dropout": 0.0,
            "dtype": "bfloat16",
            "head_dim": head_dim,
            "hidden_act": "silu",
            "hidden_size": shape["hidden"],
            "initializer_range": 0.02,
            "intermediate_size": shape["intermediate"],
            "max_position_embeddings": 262144,
            "num_attention_heads": shape["heads"],
            "num_hidden_layers": shape["layers"],
            "num_key_value_heads": shape["kv_heads"],
            "rms_norm_eps": 1e-6,
            "rope_scaling": {
                "mrope_interleaved": True,
                "mrope_section": _mrope_section(head_dim, 20),
                "rope_type": "default",
            },
            "rope_theta": 5000000,
            "tie_word_embeddings": False,
            "use_cache": True,
            "vocab_size": vocab,
        },
        "vision_config": {
            "model_type": "qwen3_vl",
            "deepstack_visual_indexes": list(range(min(shape["vision_depth"], shape["layers"], 3))),
            "depth": shape["vision_depth"],
            "hidden_act": "gelu_pytorch_tanh",
            "hidden_size": shape["vision_hidden"],
            "in_channels": 3,
            "initializer_range": 0.02,
            "intermediate_size": shape["vision_intermediate"],
            "num_heads": shape["vision_heads"],
            "num_position_embeddings": 2304,
            "out_hidden_size": shape["hidden"],
            "patch_size": 16,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
        },
    }


def qwen2_vl_config(ids: dict[str, int], vocab: int, shape: dict = TINY) -> dict:
    return {
        "architectures": ["Qwen2VLForConditionalGeneration"],
        "model_type": "qwen2_vl",
        "attention_dropout": 0.0,
        "bos_token_id": ids["<|endoftext|>"],
        "eos_token_id": ids["<|im_end|>"],
        "vision_start_token_id": ids["<|vision_start|>"],
        "vision_end_token_id": ids["<|vision_end|>"],
        "vision_token_id": ids["<|vision_pad|>"],
        "image_token_id": ids["<|image_pad|>"],
        "video_token_id": ids["<|video_pad|>"],
        "hidden_act": "silu",
        "hidden_size": shape["hidden"],
        "initializer_range": 0.02,
        "intermediate_size": shape["intermediate"],
        "max_position_embeddings": 32768,
        "max_window_layers": shape["layers"],
        "num_attention_heads": shape["heads"],
        "num_hidden_layers": shape["layers"],
        "num_key_value_heads": shape["kv_heads"],
        "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0,
        "sliding_window": 32768,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "use_cache": True,
        "use_sliding_window": False,
        "vision_config": {
            "depth": shape["vision_depth"],
            "embed_dim": shape["vision_hidden"],
            "mlp_ratio": 4,
            "num_heads": shape["vision_heads"],
            "in_chans": 3,
            "hidden_size": shape["hidden"],
            "patch_size": 14,
            "spatial_merge_size": 2,
            "spatial_patch_size": 14,
            "temporal_patch_size": 2,
        },
        "rope_scaling": {"type": "mrope", "mrope_section": _mrope_section(shape["hidden"] // shape["heads"], 24)},
        "vocab_size": vocab,
    }


def write_processor_files(out: Path, ids: dict[str, int], flavor: str) -> None:
    """The family's preprocessor/video/processor configs, chat template and generation config."""
    special = {"bos_token_id": ids["<|endoftext|>"], "pad_token_id": ids["<|endoftext|>"], "do_sample": True}
    eos = [ids["<|im_end|>"], ids["<|endoftext|>"]]
    if flavor == "qwen3_vl":
        processor, template = "Qwen3VLProcessor", QWEN3_CHAT_TEMPLATE
        common = {"patch_size": 16, "temporal_patch_size": 2, "merge_size": 2, "image_mean": [0.5, 0.5, 0.5],
                  "image_std": [0.5, 0.5, 0.5], "processor_class": processor}  # fmt: skip
        image = {"size": {"longest_edge": MAX_TOKENS * 32 * 32, "shortest_edge": 256 * 256}, **common,
                 "image_processor_type": "Qwen2VLImageProcessorFast"}  # fmt: skip
        video = {"size": {"longest_edge": 4 * MAX_TOKENS * 32 * 32, "shortest_edge": 4096}, **common,
                 "video_processor_type": "Qwen3VLVideoProcessor"}  # fmt: skip
        generation = {**special, "eos_token_id": eos, "top_k": 20, "top_p": 0.8, "repetition_penalty": 1.0,
                      "temperature": 0.7}  # fmt: skip
    else:
        processor, template = "Qwen2VLProcessor", CHAT_TEMPLATE
        image = {"min_pixels": 56 * 56, "max_pixels": MAX_TOKENS * 28 * 28, "patch_size": 14, "temporal_patch_size": 2,
                 "merge_size": 2, "image_mean": [0.48145466, 0.4578275, 0.40821073],
                 "image_std": [0.26862954, 0.26130258, 0.27577711], "image_processor_type": "Qwen2VLImageProcessor",
                 "processor_class": processor}  # fmt: skip
        video = {**image, "video_processor_type": "Qwen2VLVideoProcessor"}
        del video["image_processor_type"]
        generation = {**special, "eos_token_id": eos, "repetition_penalty": 1.0, "temperature": 0.01, "top_p": 0.001,
                      "top_k": 1}  # fmt: skip
    _write_json(out / "preprocessor_config.json", image)
    _write_json(out / "video_preprocessor_config.json", video)
    _write_json(out / "processor_config.json", {"processor_class": processor})
    _write_json(out / "chat_template.json", {"chat_template": template})
    _write_json(out / "generation_config.json", generation)
    tokenizer_config = json.loads((out / "tokenizer_config.json").read_text())
    tokenizer_config.update(chat_template=template, processor_class=processor)
    _write_json(out / "tokenizer_config.json", tokenizer_config)


def build(out_dir: Path, seed: int = 0, flavor: str = "qwen3_vl") -> Path:
    """Write the model directory (a half-written one never looks complete). `flavor`: one of FLAVORS."""
    if flavor not in FLAVORS:
        raise ValueError(f"flavor must be one of {FLAVORS}, not {flavor!r}")

    def make(partial: Path) -> tuple[dict, dict]:
        ids = build_tokenizer(partial)
        vocab = (ids["_size"] + 63) // 64 * 64  # padded like Qwen's
        config = (qwen3_vl_config if flavor == "qwen3_vl" else qwen2_vl_config)(ids, vocab)
        write_processor_files(partial, ids, flavor)
        weights, quantization = random_weights(config, ids, seed)
        config["quantization"] = config["quantization_config"] = quantization
        return config, weights

    return write_model(out_dir, make)


def main(argv: list[str] | None = None) -> int:
    return cli(argv, "worker_vision.tiny_qwen", __doc__, build, flavor=FLAVORS)


if __name__ == "__main__":
    sys.exit(main())

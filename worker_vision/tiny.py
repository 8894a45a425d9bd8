"""`python -m worker_vision.tiny OUTDIR`: a tiny random-weight Qwen2.5-VL model for tests.

It is laid out like mlx-community/Qwen2.5-VL-*-Instruct-4bit (config.json with the text
parameters at its root plus `vision_config`, mlx-named weights, a Qwen2 byte-level BPE
tokenizer with the real special tokens, the real chat template, a Qwen2-VL image processor),
so `mlx_vlm.load` takes it through its normal path, offline, and tests exercise the real
mlx-vlm vision tower, image processor and mRoPE, only with nonsense text.

Pitfalls it keeps (each cost a failed load or wrong shapes once):
- mlx-vlm's Qwen2.5-VL config copies the text parameters from the config root: they must
  not live under `text_config` only;
- `mrope_section` must sum to half the attention head size;
- the vocabulary is padded to a multiple of 64 like Qwen's (151665 -> 152064), so the
  model can name ids the tokenizer lacks (`len(processor.tokenizer)` is the real size):
  their output rows are zeroed, as a trained model never picks them, or mlx-vlm's own
  detokenizer fails on them;
- `max_pixels` is small (256 * 28 * 28): an image costs at most 256 tokens, tests stay fast.

The output head is untied from the embedding (as in Qwen2.5-VL-7B): a tied random head mostly
repeats the last input token, an untied one gives varied text. Its end-of-turn rows are
zeroed so greedy decoding never ends early by chance: lengths in tests come from max_tokens
and stop strings.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import cast

from mlx_common.tiny_models import cli, write_model
from mlx_common.tiny_models import write_json as _write_json

SPECIAL = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
]
"""Qwen2.5's special tokens in their real order (ids 151643.. in the real model)."""
PRETOKENIZE_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"""
    r""" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
CHAT_TEMPLATE = (  # Qwen2-VL / Qwen2.5-VL-*-Instruct chat_template.json
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}"
    "Picture {{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}"
    "Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
CORPUS = (
    """
Invoice number 2024-0117. Date: 12 March 2024. Total amount due: 1,234.56 EUR.
The quick brown fox jumps over the lazy dog. Describe this image in one sentence.
What is written on the page? Extract the table as JSON with keys name, price, quantity.
A red square, a green circle and a blue triangle on a white background.
Wörter mit Umlauten, 日本語のテキスト, emojis 🙂 and numbers 0123456789 ()[]{}<>:;,.!?'"-_/@#
""".strip().splitlines()
    * 4
)
BPE_VOCAB = 512
HIDDEN, LAYERS, HEADS, KV_HEADS = 64, 2, 4, 2
VISION_HIDDEN, VISION_DEPTH = 64, 2
MAX_PIXELS = 256 * 28 * 28
BITS, GROUP_SIZE = 4, 64
TINY: dict = {"hidden": HIDDEN, "layers": LAYERS, "heads": HEADS, "kv_heads": KV_HEADS, "intermediate": 2 * HIDDEN,
        "vocab": 0, "vision_hidden": VISION_HIDDEN, "vision_depth": VISION_DEPTH,
        "vision_intermediate": 2 * VISION_HIDDEN, "vision_heads": 4}  # fmt: skip
SHAPES: dict[str, dict] = {
    "tiny": TINY,
    # Qwen2.5-VL-7B-Instruct's published shape, for benchmarks on a GPU (bench/vision.py):
    # every step costs what the real model's does; the text is nonsense all the same.
    "qwen2.5-vl-7b": {"hidden": 3584, "layers": 28, "heads": 28, "kv_heads": 4, "intermediate": 18944,
                      "vocab": 152064, "vision_hidden": 1280, "vision_depth": 32, "vision_intermediate": 3420,
                      "vision_heads": 16, "full_attention": [7, 15, 23, 31]},
}  # fmt: skip
# MLX 0.32.4's CUDA backend dies with SIGFPE in the 7B's vision tower (16 heads of 80); the
# same tower with 20 heads of 64 (the same weights' bytes and FLOPs) runs. For GPU benchmarks.
SHAPES["qwen2.5-vl-7b-hd64"] = {**SHAPES["qwen2.5-vl-7b"], "vision_heads": 20}


def build_tokenizer(out: Path) -> dict[str, int]:
    """Train the BPE, write tokenizer.json and its config; returns the special tokens' ids."""
    from tokenizers import (
        AddedToken,
        Regex,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        trainers,
    )

    tok = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=BPE_VOCAB, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train_from_iterator(CORPUS, trainer=trainer)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL])
    tok.save(str(out / "tokenizer.json"))
    ids = {t: cast(int, tok.token_to_id(t)) for t in SPECIAL}  # just added: never None
    _write_json(
        out / "tokenizer_config.json",
        {
            "add_bos_token": False,
            "add_prefix_space": False,
            "bos_token": None,
            "added_tokens_decoder": {
                str(ids[t]): {
                    "content": t,
                    "lstrip": False,
                    "normalized": False,
                    "rstrip": False,
                    "single_word": False,
                    "special": True,
                }
                for t in SPECIAL
            },
            "additional_special_tokens": SPECIAL[1:],
            "chat_template": CHAT_TEMPLATE,
            "clean_up_tokenization_spaces": False,
            "eos_token": "<|im_end|>",
            "errors": "replace",
            "model_max_length": 32768,
            "pad_token": "<|endoftext|>",
            "split_special_tokens": False,
            "tokenizer_class": "Qwen2Tokenizer",
            "unk_token": None,
        },
    )
    _write_json(
        out / "special_tokens_map.json",
        {"additional_special_tokens": SPECIAL[1:], "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"},
    )
    ids["_size"] = tok.get_vocab_size()
    return ids


def model_config(ids: dict[str, int], shape: dict = TINY) -> dict:
    head_dim = shape["hidden"] // shape["heads"]
    half = head_dim // 2  # mrope_section sums to half the head size (real: [16, 24, 24] for 128)
    hw = (half - half // 4) // 2
    return {
        "architectures": ["Qwen2_5_VLForConditionalGeneration"],
        "model_type": "qwen2_5_vl",
        "bos_token_id": ids["<|endoftext|>"],
        "eos_token_id": ids["<|im_end|>"],
        "pad_token_id": ids["<|endoftext|>"],
        "vision_start_token_id": ids["<|vision_start|>"],
        "vision_end_token_id": ids["<|vision_end|>"],
        "vision_token_id": ids["<|vision_pad|>"],
        "image_token_id": ids["<|image_pad|>"],
        "video_token_id": ids["<|video_pad|>"],
        "hidden_act": "silu",
        "hidden_size": shape["hidden"],
        "intermediate_size": shape["intermediate"],
        "num_attention_heads": shape["heads"],
        "num_key_value_heads": shape["kv_heads"],
        "num_hidden_layers": shape["layers"],
        "max_position_embeddings": 32768,
        "max_window_layers": shape["layers"],
        "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0,
        "rope_scaling": {"type": "mrope", "mrope_section": [half - 2 * hw, hw, hw]},
        "sliding_window": 32768,
        "use_sliding_window": False,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "use_cache": True,
        "vocab_size": shape["vocab"] or (ids["_size"] + 63) // 64 * 64,  # padded like Qwen's
        "vision_config": {
            "model_type": "qwen2_5_vl",
            "depth": shape["vision_depth"],
            "hidden_act": "silu",
            "hidden_size": shape["vision_hidden"],
            "intermediate_size": shape["vision_intermediate"],
            "num_heads": shape["vision_heads"],
            "in_chans": 3,
            "in_channels": 3,
            "out_hidden_size": shape["hidden"],
            "patch_size": 14,
            "spatial_merge_size": 2,
            "spatial_patch_size": 14,
            "temporal_patch_size": 2,
            "window_size": 112,
            "fullatt_block_indexes": shape.get("full_attention", [shape["vision_depth"] - 1]),
            "tokens_per_second": 2,
        },
    }


def write_processor_files(out: Path, ids: dict[str, int]) -> None:
    image = {
        "min_pixels": 56 * 56,
        "max_pixels": MAX_PIXELS,
        "patch_size": 14,
        "temporal_patch_size": 2,
        "merge_size": 2,
        "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.26862954, 0.26130258, 0.27577711],
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "do_convert_rgb": True,
        "image_processor_type": "Qwen2VLImageProcessor",
        "processor_class": "Qwen2_5_VLProcessor",
    }
    _write_json(out / "preprocessor_config.json", image)
    _write_json(out / "video_preprocessor_config.json", {**image, "video_processor_type": "Qwen2VLVideoProcessor"})
    _write_json(out / "processor_config.json", {"processor_class": "Qwen2_5_VLProcessor"})
    _write_json(out / "chat_template.json", {"chat_template": CHAT_TEMPLATE})
    _write_json(
        out / "generation_config.json",
        {
            "bos_token_id": ids["<|endoftext|>"],
            "eos_token_id": [ids["<|im_end|>"], ids["<|endoftext|>"]],
            "pad_token_id": ids["<|endoftext|>"],
            "do_sample": False,
        },
    )


def random_weights(config: dict, ids: dict[str, int], seed: int) -> tuple[dict, dict]:
    """mlx-vlm's own Model class built from `config` (the path mlx_vlm.utils.load_model takes),
    with random weights, the language model 4-bit like `mlx_vlm.convert -q`. Returns its
    weights and the quantization entry for config.json."""
    import mlx.core as mx
    from mlx import nn
    from mlx.utils import tree_flatten
    from mlx_vlm.utils import get_model_and_args, skip_multimodal_module, update_module_configs

    mx.random.seed(seed)
    cfg = copy.deepcopy(config)
    arch, _ = get_model_and_args(cfg)
    cfg.setdefault("text_config", {})
    model = arch.Model(update_module_configs(arch.ModelConfig.from_dict(cfg), arch, cfg, ["text", "vision"]))
    model.set_dtype(mx.bfloat16)
    head = model.language_model.lm_head.weight
    for name in ("<|im_end|>", "<|endoftext|>"):
        head[ids[name]] = 0.0  # never end early by chance
    head[ids["_size"] :] = 0.0  # padding rows name no token: keep them out of greedy picks

    def quantizable(path: str, module) -> bool:  # the vision tower stays in full precision
        return (
            hasattr(module, "to_quantized")
            and not skip_multimodal_module(path)
            and module.weight.shape[-1] % GROUP_SIZE == 0
        )

    nn.quantize(model, group_size=GROUP_SIZE, bits=BITS, class_predicate=quantizable)
    return dict(tree_flatten(model.parameters())), {"group_size": GROUP_SIZE, "bits": BITS, "mode": "affine"}


def build(out_dir: Path, seed: int = 0, shape: str = "tiny") -> Path:
    """Write the model directory (a half-written one never looks complete). `shape`: a key of SHAPES."""

    def make(partial: Path) -> tuple[dict, dict]:
        ids = build_tokenizer(partial)
        config = model_config(ids, SHAPES[shape])
        write_processor_files(partial, ids)
        weights, quantization = random_weights(config, ids, seed)
        config["quantization"] = config["quantization_config"] = quantization
        return config, weights

    return write_model(out_dir, make)


def main(argv: list[str] | None = None) -> int:
    return cli(argv, "worker_vision.tiny", __doc__, build, shape=SHAPES)


if __name__ == "__main__":
    sys.exit(main())

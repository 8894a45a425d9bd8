"""`python -m worker_vision.tiny_gemma3 OUTDIR`: a tiny random-weight Gemma 3 vision model for tests.

It is laid out like mlx-community/gemma-3-*-it-4bit (config.json with `text_config` and a SigLIP
`vision_config`, mlx-named weights with the language model 4-bit, a Gemma byte-fallback BPE
tokenizer with the real special and image tokens, the real chat template in chat_template.json,
a Gemma3ImageProcessor, the real generation_config.json), so `mlx_vlm.load` takes it through its
normal path, offline, and tests exercise mlx-vlm's real SigLIP tower, projector, image-token
expansion and sliding-window cache, only with nonsense text.

Pitfalls it keeps (each cost a failed load or wrong shapes once):
- transformers 5 rebuilds a GemmaTokenizer from tokenizer.json's vocab and merges only, with its
  own pipeline (spaces to "▁", byte fallback, no byte-level BPE): the BPE is trained that way;
- mlx-vlm reads `mm_tokens_per_image` and `vocab_size` from `text_config` only (defaults 256 and
  262208): both are set there; `image_size / patch_size` patches per side are average-pooled to
  `sqrt(mm_tokens_per_image)` per side, so 112 / 14 = 8 -> 4 x 4 = 16 tokens an image;
- `sliding_window_pattern` must not exceed the layer count (mlx-vlm indexes the cache with it):
  2 layers, pattern 2, as one sliding and one global layer;
- mlx-vlm divides image features by sqrt(config.hidden_size) (root, default 2048) before the text
  model multiplies all embeddings by sqrt(text hidden): the root names the text hidden size;
- the projector weight starts as all ones (every image token equal): it is drawn at random;
- mlx-vlm always copies embed_tokens.weight over lm_head.weight (tied, as in Gemma); the head's own
  scales and biases survive, so the rows of the special and image tokens and the padded rows (vocab
  padded to a multiple of 64) are zeroed through them: greedy decoding never ends early by chance,
  never emits an image marker a later turn would take for an image, never names a missing id;
- a tied head makes the last input token the likeliest next one (greedy text repeats one token):
  the final norm's gain gets random signs, which undoes that.
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path
from typing import cast

from mlx_common.tiny_models import cli, write_model
from worker_vision.tiny import BITS, BPE_VOCAB, CORPUS, GROUP_SIZE, _write_json

SPECIAL = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "<start_of_turn>", "<end_of_turn>"]
"""Gemma's leading special tokens, in their real order (pad 0, eos 1, bos 2, unk 3, mask 4)."""
IMAGE_SPECIAL = ["<start_of_image>", "<end_of_image>", "<image_soft_token>"]
"""The image tokens, after the text vocabulary as in the real one (255999, 256000, 262144)."""
END_OF_TURN = ("<eos>", "<end_of_turn>")
CHAT_TEMPLATE = """{{ bos_token }}
{%- if messages[0]['role'] == 'system' -%}
    {%- if messages[0]['content'] is string -%}
        {%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}
    {%- else -%}
        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\n\n' -%}
    {%- endif -%}
    {%- set loop_messages = messages[1:] -%}
{%- else -%}
    {%- set first_user_prefix = "" -%}
    {%- set loop_messages = messages -%}
{%- endif -%}
{%- for message in loop_messages -%}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
        {{ raise_exception("Conversation roles must alternate user/assistant/user/assistant/...") }}
    {%- endif -%}
    {%- if (message['role'] == 'assistant') -%}
        {%- set role = "model" -%}
    {%- else -%}
        {%- set role = message['role'] -%}
    {%- endif -%}
    {{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else "") }}
    {%- if message['content'] is string -%}
        {{ message['content'] | trim }}
    {%- elif message['content'] is iterable -%}
        {%- for item in message['content'] -%}
            {%- if item['type'] == 'image' -%}
                {{ '<start_of_image>' }}
            {%- elif item['type'] == 'text' -%}
                {{ item['text'] | trim }}
            {%- endif -%}
        {%- endfor -%}
    {%- else -%}
        {{ raise_exception("Invalid content type") }}
    {%- endif -%}
    {{ '<end_of_turn>\n' }}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{'<start_of_turn>model\n'}}
{%- endif -%}
"""  # google/gemma-3-4b-it's chat_template.json (from memory of it and a public copy; no hub here to diff)
TURNS = ["user\nDescribe this image.\n\n", "model\nA red square on a white background.\n", "\n\n\n"]
HIDDEN, LAYERS, HEADS, KV_HEADS, HEAD_DIM = 64, 2, 4, 2, 16
VISION_HIDDEN, VISION_LAYERS, IMAGE_SIZE, PATCH_SIZE = 64, 2, 112, 14
MM_TOKENS = 16
SLIDING_WINDOW = 64
TINY: dict = {"hidden": HIDDEN, "intermediate": 2 * HIDDEN, "layers": LAYERS, "heads": HEADS, "kv_heads": KV_HEADS,
              "head_dim": HEAD_DIM, "window": SLIDING_WINDOW, "pattern": LAYERS, "vocab": 0,
              "vision_hidden": VISION_HIDDEN, "vision_intermediate": 2 * VISION_HIDDEN, "vision_heads": 4,
              "vision_layers": VISION_LAYERS, "image_size": IMAGE_SIZE, "mm_tokens": MM_TOKENS}  # fmt: skip
SHAPES: dict[str, dict] = {
    "tiny": TINY,
    # gemma-3-4b-it's published shape (SigLIP-400M tower, 896 px, 256 tokens an image), for GPU
    # benchmarks (bench/vision.py): every step costs what the real model's does.
    "gemma-3-4b": {"hidden": 2560, "intermediate": 10240, "layers": 34, "heads": 8, "kv_heads": 4, "head_dim": 256,
                   "window": 1024, "pattern": 6, "vocab": 262208, "vision_hidden": 1152,
                   "vision_intermediate": 4304, "vision_heads": 16, "vision_layers": 27, "image_size": 896,
                   "mm_tokens": 256},
}  # fmt: skip
"""Four images' worth of soft tokens, as the real 1024 is four of 256: prompts of a few images
already wrap the sliding layers' rotating cache."""


def build_tokenizer(out: Path) -> dict[str, int]:
    """Train a Gemma-style BPE (words start with "▁", unknown characters fall back to <0xNN>
    bytes), write tokenizer.json and its configs; returns the special tokens' ids."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    trainee = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    trainee.normalizer = normalizers.Replace(" ", "▁")
    trainee.pre_tokenizer = pre_tokenizers.Split("▁", behavior="merged_with_next")  # no merge spans a word break
    trainee.train_from_iterator(CORPUS + TURNS, trainers.BpeTrainer(vocab_size=BPE_VOCAB, show_progress=False))
    trained = json.loads(trainee.to_str())["model"]
    vocab = {t: i for i, t in enumerate(SPECIAL + [f"<0x{b:02X}>" for b in range(256)])}
    for token in sorted(trained["vocab"], key=trained["vocab"].__getitem__):
        vocab.setdefault(token, len(vocab))
    merges = [(a, b) for a, b in (m.split(" ") if isinstance(m, str) else m for m in trained["merges"])]
    tok = Tokenizer(models.BPE(vocab, merges, unk_token="<unk>", fuse_unk=True, byte_fallback=True))
    tok.normalizer = normalizers.Replace(" ", "▁")  # what transformers' GemmaTokenizer sets, whatever the file says
    tok.pre_tokenizer = pre_tokenizers.Split(" ", behavior="merged_with_previous")
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A <bos> $B:1", special_tokens=[("<bos>", vocab["<bos>"])]
    )
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL + IMAGE_SPECIAL])
    tok.save(str(out / "tokenizer.json"))
    ids = {t: cast(int, tok.token_to_id(t)) for t in SPECIAL + IMAGE_SPECIAL}  # just added: never None
    named = {"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>", "image_token": "<image_soft_token>"}
    basic = {"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>", "unk_token": "<unk>"}
    flags = {"lstrip": False, "normalized": False, "rstrip": False, "single_word": False, "special": True}
    _write_json(
        out / "tokenizer_config.json",
        {
            "add_bos_token": True,
            "add_eos_token": False,
            "added_tokens_decoder": {str(i): {"content": t, **flags} for t, i in ids.items()},
            **basic,
            **named,
            "chat_template": CHAT_TEMPLATE,
            "clean_up_tokenization_spaces": False,
            "extra_special_tokens": named,
            "model_max_length": 1000000000000000019884624838656,
            "padding_side": "left",
            "processor_class": "Gemma3Processor",
            "sp_model_kwargs": None,
            "spaces_between_special_tokens": False,
            "tokenizer_class": "GemmaTokenizer",
            "use_default_system_prompt": False,
        },
    )
    _write_json(out / "special_tokens_map.json", {**named, **basic})
    ids["_size"] = tok.get_vocab_size()
    return ids


def model_config(ids: dict[str, int], shape: dict = TINY) -> dict:
    vocab_size = shape["vocab"] or (ids["_size"] + 63) // 64 * 64  # padded like Gemma's (262145 -> 262208)
    return {
        "architectures": ["Gemma3ForConditionalGeneration"],
        "model_type": "gemma3",
        "boi_token_index": ids["<start_of_image>"],
        "eoi_token_index": ids["<end_of_image>"],
        "image_token_index": ids["<image_soft_token>"],
        "eos_token_id": [ids[t] for t in END_OF_TURN],
        "pad_token_id": ids["<pad>"],
        "hidden_size": shape["hidden"],  # not in the real config: see the module docstring
        "initializer_range": 0.02,
        "mm_tokens_per_image": shape["mm_tokens"],
        "vocab_size": vocab_size,
        "text_config": {
            "model_type": "gemma3_text",
            "hidden_size": shape["hidden"],
            "intermediate_size": shape["intermediate"],
            "num_hidden_layers": shape["layers"],
            "num_attention_heads": shape["heads"],
            "num_key_value_heads": shape["kv_heads"],
            "head_dim": shape["head_dim"],
            "query_pre_attn_scalar": shape["head_dim"],
            "hidden_activation": "gelu_pytorch_tanh",
            "rms_norm_eps": 1e-6,
            "rope_theta": 1000000.0,
            "rope_local_base_freq": 10000.0,
            "rope_scaling": {"factor": 8.0, "rope_type": "linear"},
            "sliding_window": shape["window"],
            "sliding_window_pattern": shape["pattern"],
            "max_position_embeddings": 131072,
            "mm_tokens_per_image": shape["mm_tokens"],
            "vocab_size": vocab_size,
        },
        "vision_config": {
            "model_type": "siglip_vision_model",
            "hidden_size": shape["vision_hidden"],
            "intermediate_size": shape["vision_intermediate"],
            "num_attention_heads": shape["vision_heads"],
            "num_hidden_layers": shape["vision_layers"],
            "image_size": shape["image_size"],
            "patch_size": PATCH_SIZE,
            "layer_norm_eps": 1e-6,
            "vision_use_head": False,
        },
    }


def write_processor_files(out: Path, ids: dict[str, int], shape: dict = TINY) -> None:
    _write_json(
        out / "preprocessor_config.json",
        {
            "do_convert_rgb": None,
            "do_normalize": True,
            "do_pan_and_scan": None,
            "do_rescale": True,
            "do_resize": True,
            "image_mean": [0.5, 0.5, 0.5],
            "image_processor_type": "Gemma3ImageProcessor",
            "image_seq_length": shape["mm_tokens"],
            "image_std": [0.5, 0.5, 0.5],
            "pan_and_scan_max_num_crops": None,
            "pan_and_scan_min_crop_size": None,
            "pan_and_scan_min_ratio_to_activate": None,
            "processor_class": "Gemma3Processor",
            "resample": 2,
            "rescale_factor": 1 / 255,
            "size": {"height": shape["image_size"], "width": shape["image_size"]},
        },
    )
    _write_json(
        out / "processor_config.json", {"image_seq_length": shape["mm_tokens"], "processor_class": "Gemma3Processor"}
    )
    _write_json(out / "chat_template.json", {"chat_template": CHAT_TEMPLATE})
    _write_json(
        out / "generation_config.json",
        {
            "bos_token_id": ids["<bos>"],
            "cache_implementation": "hybrid",
            "do_sample": True,
            "eos_token_id": [ids[t] for t in END_OF_TURN],
            "pad_token_id": ids["<pad>"],
            "top_k": 64,
            "top_p": 0.95,
        },
    )


def random_weights(config: dict, ids: dict[str, int], seed: int) -> tuple[dict, dict]:
    """mlx-vlm's own Model class built from `config`, with random weights, the language model
    4-bit like `mlx_vlm.convert -q`. Returns its weights and the quantization entry."""
    import mlx.core as mx
    from mlx import nn
    from mlx.utils import tree_flatten
    from mlx_vlm.utils import get_model_and_args, skip_multimodal_module, update_module_configs

    mx.random.seed(seed)
    cfg = copy.deepcopy(config)
    arch, _ = get_model_and_args(cfg)
    model = arch.Model(update_module_configs(arch.ModelConfig.from_dict(cfg), arch, cfg, ["text", "vision"]))
    hidden, vision_hidden = config["text_config"]["hidden_size"], config["vision_config"]["hidden_size"]
    projector = model.multi_modal_projector
    projector.mm_input_projection_weight = mx.random.normal((vision_hidden, hidden)) * vision_hidden**-0.5
    model.language_model.model.norm.weight = mx.random.normal((hidden,)) - 1.0  # gain 1 + w: random signs
    model.set_dtype(mx.bfloat16)

    def quantizable(path: str, module) -> bool:  # the vision tower and projector stay in full precision
        return (
            hasattr(module, "to_quantized")
            and not skip_multimodal_module(path)
            and module.weight.shape[-1] % GROUP_SIZE == 0
        )

    nn.quantize(model, group_size=GROUP_SIZE, bits=BITS, class_predicate=quantizable)
    embed, head = model.language_model.model.embed_tokens, model.language_model.lm_head
    head.weight = embed.weight  # what loading does anyway
    head.scales, head.biases = mx.array(embed.scales), mx.array(embed.biases)  # copies: the rows below are zeroed
    for rows in mx.array([ids[t] for t in SPECIAL + IMAGE_SPECIAL]), slice(ids["_size"], None):
        head.scales[rows] = 0.0  # never end early by chance, nor emit an image marker; padding names no token
        head.biases[rows] = 0.0
    return dict(tree_flatten(model.parameters())), {"group_size": GROUP_SIZE, "bits": BITS, "mode": "affine"}


def build(out_dir: Path, seed: int = 0, shape: str = "tiny") -> Path:
    """Write the model directory (a half-written one never looks complete). `shape`: a key of SHAPES."""

    def make(partial: Path) -> tuple[dict, dict]:
        ids = build_tokenizer(partial)
        config = model_config(ids, SHAPES[shape])
        write_processor_files(partial, ids, SHAPES[shape])
        weights, quantization = random_weights(config, ids, seed)
        config["quantization"] = config["quantization_config"] = quantization
        return config, weights

    return write_model(out_dir, make)


def main(argv: list[str] | None = None) -> int:
    return cli(argv, "worker_vision.tiny_gemma3", __doc__, build, shape=SHAPES)


if __name__ == "__main__":
    sys.exit(main())

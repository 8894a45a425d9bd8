"""`python -m worker_vision.tiny_idefics3 OUTDIR [--flavor smolvlm|idefics3]`: a tiny random-weight
SmolVLM / Idefics3 model for tests.

Flavors (both mlx-vlm's Idefics3 model: a SigLIP tower, a pixel-shuffle connector, a Llama):
- `smolvlm`: laid out like mlx-community/SmolVLM2-*-Instruct (model_type `smolvlm`, a SmolLM2
  tokenizer with 128 added tokens: `<global-img>`, `<row_R_col_C>`, `<fake_token_around_image>`,
  `<image>`, 88 reserved, `<end_of_utterance>`, the SmolVLMImageProcessor, SmolVLMProcessor);
- `idefics3`: laid out like mlx-community/SmolVLM-Instruct (model_type `idefics3`, 3 added
  tokens `<fake_token_around_image>`, `<image>`, `<end_of_utterance>`; `<global-img>` and the
  row/col tags are plain text there; Idefics3ImageProcessor, Idefics3Processor).
Both carry the real chat template (`<|im_start|>User:<image>...<end_of_utterance>\\nAssistant:`),
so `mlx_vlm.load` takes them through its normal path, offline, with nonsense text.

Pitfalls it keeps:
- an image costs `image_seq_len` `<image>` tokens, and nothing checks that number against the
  vision tower but the model's scatter ("Image features and image tokens do not match"): it
  must equal (image_size / patch_size / scale_factor)**2, `max_image_size.longest_edge` must
  equal the tower's `image_size` (images are squared to it), and `processor_config.json` must
  name it (mlx-vlm's processors default to 169);
- image splitting is off (`do_image_splitting: false`): one image is
  `<fake_token_around_image><global-img>` + 9 `<image>` + `<fake_token_around_image>`, 12 tokens;
  turned on (`processor.image_processor.do_image_splitting = True`) an image becomes up to 4x4
  tiles of 9, each behind a `<row_R_col_C>` tag, plus the global one;
- the chat template reads `message['content']` as a list of parts: string content renders empty
  (`User: <end_of_utterance>`), the text is lost;
- the tokenizer adds no BOS: the template writes `<|im_start|>` (mlx-vlm asks for special
  tokens here, so one in the tokenizer would double it).

As in worker_vision.tiny: bfloat16, the language model (and connector) 4-bit group 64, the vision
tower full precision, an untied head whose end-of-turn and added-token rows are zeroed so greedy
decoding never ends early by chance (lengths in tests come from max_tokens and stop strings).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import cast

from mlx_common.tiny_models import cli, write_model
from worker_vision.tiny import CORPUS, _write_json, random_weights

BASE_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<repo_name>", "<reponame>", "<file_sep>",
                "<filename>", "<gh_stars>", "<issue_start>", "<issue_comment>", "<issue_closed>",
                "<jupyter_start>", "<jupyter_text>", "<jupyter_code>", "<jupyter_output>", "<jupyter_script>",
                "<empty_output>"]  # fmt: skip
"""SmolLM2's special tokens, ids 0..16 as in the real vocabulary."""
ROW_COL = [f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7)]
ADDED = {  # appended after the base vocabulary, in the real order (SmolVLM2: 49152.., SmolVLM: 49152..)
    "smolvlm": ["<global-img>", *ROW_COL, "<fake_token_around_image>", "<image>",
                *[f"<|reserved_special_token_{i}|>" for i in range(88)], "<end_of_utterance>"],
    "idefics3": ["<fake_token_around_image>", "<image>", "<end_of_utterance>"],
}  # fmt: skip
IMAGE_TOKENS = ["<fake_token_around_image>", "<image>", "<end_of_utterance>"]
_TEMPLATE = (  # HuggingFaceTB/SmolVLM*-Instruct chat_template.json; {video} is SmolVLM2's video branch
    "<|im_start|>{{% for message in messages %}}{{{{message['role'] | capitalize}}}}"
    "{{% if message['content'][0]['type'] == 'image' %}}{{{{':'}}}}{{% else %}}{{{{': '}}}}{{% endif %}}"
    "{{% for line in message['content'] %}}{{% if line['type'] == 'text' %}}{{{{line['text']}}}}"
    "{{% elif line['type'] == 'image' %}}{{{{ '<image>' }}}}{video}{{% endif %}}{{% endfor %}}<end_of_utterance>\n"
    "{{% endfor %}}{{% if add_generation_prompt %}}{{{{ 'Assistant:' }}}}{{% endif %}}"
)
CHAT_TEMPLATES = {
    "smolvlm": _TEMPLATE.format(video="{% elif line['type'] == 'video' %}{{ '<video>' }}"),
    "idefics3": _TEMPLATE.format(video=""),
}
FLAVORS: dict[str, dict] = {
    # real: SmolVLM2-256M/500M (patch 16, image 512, scale 4: 64 tokens a tile), SmolVLM-Instruct
    # (patch 14, image 384, scale 3: 81 tokens a tile)
    "smolvlm": {"arch": "SmolVLMForConditionalGeneration", "vision_type": "smolvlm_vision",
                "processor": "SmolVLMProcessor", "image_processor": "SmolVLMImageProcessor", "patch": 16, "scale": 4,
                "rope_theta": 100000.0, "max_len": 8192},
    "idefics3": {"arch": "Idefics3ForConditionalGeneration", "vision_type": "idefics3",
                 "processor": "Idefics3Processor", "image_processor": "Idefics3ImageProcessor", "patch": 14, "scale": 3,
                 "rope_theta": 273768.0, "max_len": 16384},
}  # fmt: skip
GRID = 3
"""Image tokens per side after the pixel shuffle: an image costs GRID**2 = 9 `<image>` tokens."""
BPE_VOCAB = 512
HIDDEN, LAYERS, HEADS, KV_HEADS = 64, 2, 4, 2
VISION_HIDDEN, VISION_LAYERS, VISION_HEADS = 64, 2, 4


def image_size(flavor: str) -> int:
    return FLAVORS[flavor]["patch"] * FLAVORS[flavor]["scale"] * GRID  # 192 / 126 pixels


def build_tokenizer(out: Path, flavor: str) -> dict[str, int]:
    """Train a SmolLM2-style byte-level BPE, add the family's tokens, write tokenizer.json and its
    config; returns the special tokens' ids (and `_base`, the first added id)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.post_processor = processors.ByteLevel(trim_offsets=False)  # adds no BOS, like SmolLM2's
    tok.decoder = decoders.ByteLevel()
    special = [AddedToken(t, special=True, normalized=False) for t in BASE_SPECIAL]
    trainer = trainers.BpeTrainer(
        vocab_size=BPE_VOCAB,
        special_tokens=special,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer=trainer)
    base = tok.get_vocab_size()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in ADDED[flavor]])
    tok.save(str(out / "tokenizer.json"))
    ids = {t: cast(int, tok.token_to_id(t)) for t in BASE_SPECIAL + ADDED[flavor]}  # just added: never None
    names = {"bos_token": "<|im_start|>", "eos_token": "<end_of_utterance>", "pad_token": "<|im_end|>",
             "unk_token": "<|endoftext|>", "additional_special_tokens": IMAGE_TOKENS}  # fmt: skip
    extra = {}
    if flavor == "smolvlm":  # SmolVLMProcessor reads these tokenizer attributes
        extra = {"fake_image_token": "<fake_token_around_image>", "image_token": "<image>",
                 "global_image_token": "<global-img>", "end_of_utterance_token": "<end_of_utterance>"}  # fmt: skip
    decoder = {str(ids[t]): {"content": t, "lstrip": False, "normalized": False, "rstrip": False,
                             "single_word": False, "special": True} for t in BASE_SPECIAL + ADDED[flavor]}  # fmt: skip
    _write_json(
        out / "tokenizer_config.json",
        {
            "add_prefix_space": False,
            "added_tokens_decoder": decoder,
            **names,
            "chat_template": CHAT_TEMPLATES[flavor],
            "clean_up_tokenization_spaces": False,
            **({"extra_special_tokens": extra} if extra else {}),
            "legacy": False,
            "model_max_length": FLAVORS[flavor]["max_len"],
            "processor_class": FLAVORS[flavor]["processor"],
            "tokenizer_class": "GPT2Tokenizer",
            "truncation_side": "left",
            "vocab_size": base,
        },
    )
    _write_json(out / "special_tokens_map.json", names)
    return {**ids, "_base": base, "_size": tok.get_vocab_size()}


def model_config(ids: dict[str, int], flavor: str) -> dict:
    f, size = FLAVORS[flavor], image_size(flavor)
    return {
        "architectures": [f["arch"]],
        "model_type": flavor,
        "image_token_id": ids["<image>"],
        "image_seq_len": GRID**2,
        "scale_factor": f["scale"],
        "pad_token_id": ids["<|im_end|>"],
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "use_cache": True,
        "vocab_size": ids["_size"],
        "text_config": {
            "architectures": ["VLlama3ForCausalLM"],
            "model_type": "llama",
            "hidden_act": "silu",
            "hidden_size": HIDDEN,
            "intermediate_size": 2 * HIDDEN,
            "num_attention_heads": HEADS,
            "num_key_value_heads": KV_HEADS,
            "head_dim": HIDDEN // HEADS,
            "num_hidden_layers": LAYERS,
            "max_position_embeddings": f["max_len"],
            "rms_norm_eps": 1e-5,
            "rope_theta": f["rope_theta"],
            "pad_token_id": ids["<|im_end|>"],
            "tie_word_embeddings": False,
            "torch_dtype": "bfloat16",
            "vocab_size": ids["_size"],
        },
        "vision_config": {
            "model_type": f["vision_type"],
            "hidden_act": "gelu_pytorch_tanh",
            "hidden_size": VISION_HIDDEN,
            "intermediate_size": 2 * VISION_HIDDEN,
            "num_attention_heads": VISION_HEADS,
            "num_hidden_layers": VISION_LAYERS,
            "num_channels": 3,
            "patch_size": f["patch"],
            "image_size": size,
            "layer_norm_eps": 1e-6,
            "max_image_size": {"longest_edge": size},
            "size": {"longest_edge": 4 * size},
        },
    }


def write_processor_files(out: Path, ids: dict[str, int], flavor: str) -> None:
    f, size = FLAVORS[flavor], image_size(flavor)
    image = {
        "do_convert_rgb": True,
        "do_image_splitting": False,
        "do_normalize": True,
        "do_pad": True,
        "do_rescale": True,
        "do_resize": True,
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5],
        "image_processor_type": f["image_processor"],
        "max_image_size": {"longest_edge": size},
        "processor_class": f["processor"],
        "resample": 1,
        "rescale_factor": 1 / 255,
        "size": {"longest_edge": 4 * size},
    }
    if flavor == "smolvlm":
        image["video_sampling"] = {"fps": 1, "max_frames": 64, "video_size": {"longest_edge": size}}
    _write_json(out / "preprocessor_config.json", image)
    _write_json(out / "processor_config.json", {"image_seq_len": GRID**2, "processor_class": f["processor"]})
    _write_json(out / "chat_template.json", {"chat_template": CHAT_TEMPLATES[flavor]})
    _write_json(
        out / "generation_config.json",
        {
            "bos_token_id": ids["<|im_start|>"],
            "eos_token_id": [ids["<end_of_utterance>"], ids["<|im_end|>"]],
            "pad_token_id": ids["<|im_end|>"],
            "do_sample": False,
        },
    )


def build(out_dir: Path, seed: int = 0, flavor: str = "smolvlm") -> Path:
    """Write the model directory (a half-written one never looks complete). `flavor`: a key of FLAVORS."""
    if flavor not in FLAVORS:
        raise ValueError(f"flavor {flavor!r}: one of {sorted(FLAVORS)}")

    def make(partial: Path) -> tuple[dict, dict]:
        ids = build_tokenizer(partial, flavor)
        config = model_config(ids, flavor)
        write_processor_files(partial, ids, flavor)
        # tiny.random_weights zeroes the head rows of these two ids and of every id from `_size`:
        # here the end-of-text tokens and every added token (the image tokens, `<end_of_utterance>`);
        # the other SmolLM2 specials (`<jupyter_start>`, ...) go too, through the 4-bit head's scales
        # and biases (a zero scale and bias dequantize to 0): a chat model never writes them.
        zeroed = {"<|endoftext|>": ids["<|endoftext|>"], "<|im_end|>": ids["<|im_end|>"], "_size": ids["_base"]}
        weights, quantization = random_weights(config, zeroed, seed)
        for part in ("scales", "biases"):
            weights[f"language_model.lm_head.{part}"][: len(BASE_SPECIAL)] = 0.0
        config["quantization"] = config["quantization_config"] = quantization
        return config, weights

    return write_model(out_dir, make)


def main(argv: list[str] | None = None) -> int:
    return cli(argv, "worker_vision.tiny_idefics3", __doc__, build, flavor=FLAVORS)


if __name__ == "__main__":
    sys.exit(main())

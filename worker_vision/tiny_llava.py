"""`python -m worker_vision.tiny_llava OUTDIR [--flavor llava|mistral3]`: tiny random-weight LLaVA / Mistral 3 models.

worker_vision.tiny's sibling for families whose language model is a plain Llama/Mistral decoder
(1D RoPE from the cache offset): `llava` is laid out like mlx-community/llava-1.5-7b-4bit (CLIP
tower, Vicuna), `mistral3` like mlx-community/Mistral-Small-3.1-24B-Instruct-2503-4bit (Pixtral
tower, patch merger, Mistral): config.json with `text_config` and `vision_config`, mlx-named
weights, the family's kind of tokenizer with its real special tokens at their real ids, the real
chat template and processor configs with a small image size (16 image tokens), so `mlx_vlm.load`
takes it through its normal path, offline.

Pitfalls it keeps (each is a failed load, wrong shapes or a silent fallback):
- LLaVA: the processor writes `<image>` (size // patch_size)**2 + num_additional_image_tokens - 1
  times ("default" strategy: the tower's CLS state is dropped); the crop size must equal the
  tower's `image_size` (its position table is fixed), and processor_config.json must carry
  patch_size 14 / num_additional_image_tokens 1 / vision_feature_select_strategy "default";
- LLaVA's tokenizer is Llama's SentencePiece-style BPE (Metaspace, byte fallback, `<0xNN>` pieces
  at 3..258; mlx-vlm picks its SPM streaming detokenizer from the decoder); `<image>` and `<pad>`
  follow the base vocabulary (32000, 32001 in the real one); the vocabulary is padded to a
  multiple of 64 (32064) and padded rows are zeroed;
- Mistral 3's tokenizer is Tekken as HF ships it (byte-level BPE, control tokens first: the 20
  named ones keep their real ids, `[IMG]` 10, `[IMG_BREAK]` 12, `[IMG_END]` 13);
  transformers 5 loads it with TokenizersBackend (no tekken.json, no mistral_common);
- mlx-vlm's Mistral 3 text config has no default `head_dim` / `rope_theta`: both are written;
- the Pixtral tower's 2D RoPE table covers vision `image_size // patch_size` patches per side:
  it must cover the processor's `longest_edge`;
- mlx-vlm's AutoProcessor patch swallows any error of the family's processor and falls back to
  transformers' class: a broken processor config does not fail the load, it changes the class;
- not fixable here (mlx-vlm #870): under transformers 5 `mlx_vlm.utils.prepare_inputs` fails on
  LLaVA with images (LlavaProcessor forwards `padding` to the image processor, whose typed kwargs
  reject it), for the real checkpoint too; `processor(text=[prompt], images=images)` works.

The output heads are untied. Every control-token row (end of turn, image tokens, ...) is zeroed,
as a trained model never picks them: greedy decoding never ends early by chance and never writes
an image token that a follow-up turn would have to match with image features. So is every row
of a lone byte that decodes to U+FFFD or a control character (byte-fallback `<0xNN>` pieces,
byte-level bytes): the text streams as printable UTF-8.
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

from mlx_common.tiny_models import cli, write_model
from worker_vision.tiny import BITS, CORPUS, GROUP_SIZE, _write_json

FLAVORS = ("llava", "mistral3")
BPE_VOCAB = 512
HIDDEN, LAYERS, HEADS, INTERMEDIATE = 64, 2, 4, 128
VISION_HIDDEN, VISION_LAYERS, VISION_HEADS, VISION_INTERMEDIATE = 64, 2, 4, 128
PATCH = 14
LLAVA_SIZE = 56  # (56 / 14)**2 = 16 image tokens
MISTRAL3_EDGE = 112  # longest edge: (112 / 28)**2 = 16 image tokens, plus 3 [IMG_BREAK] and 1 [IMG_END]
CLIP_MEAN, CLIP_STD = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]

LLAVA_SPECIAL = ["<unk>", "<s>", "</s>"]  # ids 0..2; `<image>`, `<pad>` follow the BPE vocabulary
LLAVA_TEMPLATE = (  # llava-hf/llava-1.5-7b-hf chat_template.json
    "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': '}}{% endif %}"
    "{# Render all images first #}{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}"
    "{{ '<image>\n' }}{% endfor %}{# Render all text next #}{% if message['role'] != 'assistant' %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] + ' '}}"
    "{% endfor %}{% else %}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{% generation %}{{ content['text'] + ' '}}{% endgeneration %}{% endfor %}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)
MISTRAL3_SPECIAL = ["<unk>", "<s>", "</s>", "[INST]", "[/INST]", "[AVAILABLE_TOOLS]", "[/AVAILABLE_TOOLS]",
                    "[TOOL_RESULTS]", "[/TOOL_RESULTS]", "[TOOL_CALLS]", "[IMG]", "<pad>", "[IMG_BREAK]",
                    "[IMG_END]", "[PREFIX]", "[MIDDLE]", "[SUFFIX]", "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]",
                    "[TOOL_CONTENT]"]  # fmt: skip
"""Tekken's named control tokens, ids 0..19 as in Mistral-Small-3.1 (the real one has 1000)."""
TEKKEN_REGEX = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|[^\r\n\p{L}\p{N}]?"
    r"[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+"
    r"|\s+(?!\S)|\s+"
)
_MISTRAL3_SYSTEM = (  # a Jinja string literal: \n and \" are Jinja's escapes
    r"You are Mistral Small 3, a Large Language Model (LLM) created by Mistral AI, a French startup headquartered "
    r"in Paris.\nYour knowledge base was last updated on 2023-10-01. The current date is " + '" + today + "'
    r".\n\nWhen you're not sure about some information, you say that you don't have the information and don't "
    r"make up anything.\nIf the user's question is not clear, ambiguous, or does not provide enough context for "
    r"you to accurately answer the question, you do not try to answer it right away and you rather ask the user "
    r"to clarify their request (e.g. \"What are some good restaurants around me?\" => \"Where are you?\" or "
    r"\"When is the next flight to Tokyo\" => \"Where do you travel from?\")"
)
MISTRAL3_TEMPLATE = (  # Mistral-Small-3.1-24B-Instruct-2503's processor chat template, byte for byte
    '{%- set today = strftime_now("%Y-%m-%d") %}\n'
    + f'{{%- set default_system_message = "{_MISTRAL3_SYSTEM}" %}}\n'
    + """
{{- bos_token }}

{%- if messages[0]['role'] == 'system' %}
    {%- if messages[0] is string %}
        {%- set system_message = messages[0]['content'] %}
        {%- set loop_messages = messages[1:] %}
    {%- else %} \n        {%- set system_message = messages[0]['content'][0]['text'] %}
        {%- set loop_messages = messages[1:] %}
    {%- endif %}
{%- else %}
    {%- set system_message = default_system_message %}
    {%- set loop_messages = messages %}
{%- endif %}
{{- '[SYSTEM_PROMPT]' + system_message + '[/SYSTEM_PROMPT]' }}

{%- for message in loop_messages %}
    {%- if message['role'] == 'user' %}
            {%- if message['content'] is string %}
            {{- '[INST]' + message['content'] + '[/INST]' }}
            {%- else %}
                    {{- '[INST]' }}
                    {%- for block in message['content'] %}
                            {%- if block['type'] == 'text' %}
                                    {{- block['text'] }}
                            {%- elif block['type'] == 'image' or block['type'] == 'image_url' %}
                                    {{- '[IMG]' }}
                                {%- else %}
                                    {{- raise_exception('Only text and image blocks are supported in message content!') }}
                                {%- endif %}
                        {%- endfor %}
                    {{- '[/INST]' }}
                {%- endif %}
    {%- elif message['role'] == 'system' %}
        {{- '[SYSTEM_PROMPT]' + message['content'] + '[/SYSTEM_PROMPT]' }}
    {%- elif message['role'] == 'assistant' %}
        {%- if message['content'] is string %}
            {{- message['content'] + eos_token }}
        {%- else %}
            {{- message['content'][0]['text'] + eos_token }}
        {%- endif %}
    {%- else %}
        {{- raise_exception('Only user, system and assistant roles are supported!') }}
    {%- endif %}
{%- endfor %}"""  # noqa: E501
)


def build_tokenizer(out: Path, flavor: str) -> dict:
    """Train the BPE, write tokenizer.json, its config and the special tokens map; returns the
    special tokens' ids, the tokenizer's size (`_size`) and the ids greedy decoding must never pick
    (`_never`: control tokens, lone bytes that decode to no printable text)."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    llava = flavor == "llava"
    if llava:  # Llama: Metaspace, byte fallback; the byte pieces are plain vocabulary, not added tokens
        special, fixed = LLAVA_SPECIAL, LLAVA_SPECIAL + [f"<0x{b:02X}>" for b in range(256)]
        tok = Tokenizer(models.BPE(unk_token="<unk>", fuse_unk=True, byte_fallback=True))
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=True)
        alphabet: list[str] = []
    else:  # Tekken as HF converts it: byte-level BPE behind Mistral's split regex
        special = fixed = MISTRAL3_SPECIAL
        tok = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(TEKKEN_REGEX), behavior="isolated", invert=False),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
        alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(
        vocab_size=BPE_VOCAB, special_tokens=fixed, initial_alphabet=alphabet, show_progress=False
    )
    tok.train_from_iterator(CORPUS, trainer=trainer)
    raw = json.loads(tok.to_str())
    raw["added_tokens"] = [t for t in raw["added_tokens"] if t["content"] in special]
    for t in raw["added_tokens"]:
        t["normalized"] = False
    tok = Tokenizer.from_str(json.dumps(raw))
    if llava:  # split=False as Llama ships it: merges never cross a ▁ anyway
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
        tok.decoder = decoders.Sequence(
            [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
        )
        tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in ("<image>", "<pad>")])
        special = special + ["<image>", "<pad>"]
    else:
        tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", tok.token_to_id("<s>"))]
    )
    tok.save(str(out / "tokenizer.json"))
    ids: dict = {t: tok.token_to_id(t) for t in special}
    assert llava or all(ids[t] == i for i, t in enumerate(MISTRAL3_SPECIAL)), ids
    named = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"}
    flags = dict(lstrip=False, normalized=False, rstrip=False, single_word=False, special=True)
    _write_json(
        out / "tokenizer_config.json",
        {
            "add_bos_token": True,
            "add_eos_token": False,
            "added_tokens_decoder": {str(ids[t]): {"content": t, **flags} for t in special},
            **named,
            "chat_template": LLAVA_TEMPLATE if llava else MISTRAL3_TEMPLATE,
            "clean_up_tokenization_spaces": False,
            "legacy": not llava,
            "model_max_length": 4096 if llava else 131072,
            "padding_side": "left",
            "processor_class": "LlavaProcessor" if llava else "PixtralProcessor",
            "tokenizer_class": "LlamaTokenizer" if llava else "LlamaTokenizerFast",
        },
    )
    _write_json(out / "special_tokens_map.json", named)
    control = set(ids.values())
    ids["_size"] = tok.get_vocab_size()
    ids["_never"] = [i for i in range(ids["_size"]) if i in control or not _printable(tok.decode([i]))]
    return ids


def _printable(text: str) -> bool:
    """False for what a lone byte decodes to: U+FFFD (part of a UTF-8 sequence) or a control character."""
    return "\ufffd" not in text and all(c.isprintable() or c in "\n\t" for c in text)


def model_config(ids: dict, flavor: str) -> dict:
    vocab = (ids["_size"] + 63) // 64 * 64
    text: dict = dict(hidden_size=HIDDEN, intermediate_size=INTERMEDIATE, num_attention_heads=HEADS,
                      num_hidden_layers=LAYERS, rms_norm_eps=1e-5, vocab_size=vocab,
                      tie_word_embeddings=False)  # fmt: skip
    vision: dict = dict(hidden_size=VISION_HIDDEN, intermediate_size=VISION_INTERMEDIATE, patch_size=PATCH,
                        num_attention_heads=VISION_HEADS, num_hidden_layers=VISION_LAYERS, num_channels=3)  # fmt: skip
    if flavor == "llava":  # llava-hf/llava-1.5-7b-hf
        text.update(architectures=["LlamaForCausalLM"], model_type="llama", torch_dtype="float16",
                    num_key_value_heads=HEADS, max_position_embeddings=4096, rope_theta=10000.0)  # fmt: skip
        vision.update(model_type="clip_vision_model", image_size=LLAVA_SIZE, projection_dim=HIDDEN,
                      hidden_act="quick_gelu", layer_norm_eps=1e-5, vocab_size=32000)  # fmt: skip
        return {
            "architectures": ["LlavaForConditionalGeneration"],
            "model_type": "llava",
            "ignore_index": -100,
            "image_token_index": ids["<image>"],
            "pad_token_id": ids["<pad>"],
            "projector_hidden_act": "gelu",
            "vision_feature_layer": -2,
            "vision_feature_select_strategy": "default",
            "tie_word_embeddings": False,
            "torch_dtype": "float16",
            "vocab_size": vocab,
            "text_config": text,  # Vicuna-7B: no GQA
            "vision_config": vision,
        }
    return {  # mistralai/Mistral-Small-3.1-24B-Instruct-2503
        "architectures": ["Mistral3ForConditionalGeneration"],
        "model_type": "mistral3",
        "image_token_index": ids["[IMG]"],
        "multimodal_projector_bias": False,
        "projector_hidden_act": "gelu",
        "spatial_merge_size": 2,
        "vision_feature_layer": -1,
        "torch_dtype": "bfloat16",
        "text_config": dict(text, model_type="mistral", head_dim=HIDDEN // HEADS, num_key_value_heads=2,
                            hidden_act="silu", max_position_embeddings=131072, rope_theta=1e9, sliding_window=None),
        "vision_config": dict(vision, model_type="pixtral", head_dim=VISION_HIDDEN // VISION_HEADS,
                              image_size=MISTRAL3_EDGE, hidden_act="silu", rope_theta=10000.0),
    }  # fmt: skip


def write_processor_files(out: Path, ids: dict, flavor: str) -> None:
    if flavor == "llava":
        image = {
            "crop_size": {"height": LLAVA_SIZE, "width": LLAVA_SIZE},
            "size": {"shortest_edge": LLAVA_SIZE},
            "do_center_crop": True,
            "image_processor_type": "CLIPImageProcessor",
            "processor_class": "LlavaProcessor",
        }
        processor = {"image_token": "<image>", "num_additional_image_tokens": 1, "patch_size": PATCH,
                     "processor_class": "LlavaProcessor", "vision_feature_select_strategy": "default"}  # fmt: skip
        template = LLAVA_TEMPLATE
    else:
        image = {
            "size": {"longest_edge": MISTRAL3_EDGE},
            "patch_size": {"height": PATCH, "width": PATCH},
            "image_processor_type": "PixtralImageProcessorFast",
            "processor_class": "PixtralProcessor",
        }
        processor = {"image_break_token": "[IMG_BREAK]", "image_end_token": "[IMG_END]", "image_token": "[IMG]",
                     "patch_size": PATCH, "processor_class": "PixtralProcessor", "spatial_merge_size": 2}  # fmt: skip
        template = MISTRAL3_TEMPLATE
    common = {"do_convert_rgb": True, "do_normalize": True, "do_rescale": True, "do_resize": True,
              "image_mean": CLIP_MEAN, "image_std": CLIP_STD, "resample": 3, "rescale_factor": 1 / 255}  # fmt: skip
    _write_json(out / "preprocessor_config.json", {**common, **image})
    _write_json(out / "processor_config.json", processor)
    _write_json(out / "chat_template.json", {"chat_template": template})
    _write_json(
        out / "generation_config.json",
        {"bos_token_id": ids["<s>"], "eos_token_id": ids["</s>"], "pad_token_id": ids["<pad>"], "do_sample": False},
    )


def random_weights(config: dict, ids: dict, seed: int) -> tuple[dict, dict]:
    """mlx-vlm's own Model class built from `config` (the path mlx_vlm.utils.load_model takes),
    with random weights, the language model 4-bit like `mlx_vlm.convert -q` (which keeps what the
    model's own `quant_predicate` refuses: Mistral 3's lm_head). Returns its weights and the
    quantization entry for config.json."""
    import mlx.core as mx
    from mlx import nn
    from mlx.utils import tree_flatten
    from mlx_vlm.utils import get_model_and_args, skip_multimodal_module, update_module_configs

    mx.random.seed(seed)
    cfg = copy.deepcopy(config)
    arch, _ = get_model_and_args(cfg)
    model = arch.Model(update_module_configs(arch.ModelConfig.from_dict(cfg), arch, cfg, ["text", "vision"]))
    model.set_dtype(mx.bfloat16)
    head = model.language_model.lm_head.weight
    for i in ids["_never"]:
        head[i] = 0.0  # never end early by chance, never write an image token or a lone byte
    head[ids["_size"] :] = 0.0  # padding rows name no token: keep them out of greedy picks
    own = getattr(model, "quant_predicate", None)

    def quantizable(path: str, module) -> bool:  # the vision tower and projector stay in full precision
        return (
            hasattr(module, "to_quantized")
            and not skip_multimodal_module(path)
            and module.weight.shape[-1] % GROUP_SIZE == 0
            and (own is None or bool(own(path, module)))
        )

    nn.quantize(model, group_size=GROUP_SIZE, bits=BITS, class_predicate=quantizable)
    return dict(tree_flatten(model.parameters())), {"group_size": GROUP_SIZE, "bits": BITS, "mode": "affine"}


def build(out_dir: Path, seed: int = 0, flavor: str = "llava") -> Path:
    """Write the model directory (a half-written one never looks complete). `flavor`: "llava" or "mistral3"."""
    if flavor not in FLAVORS:
        raise ValueError(f"flavor must be one of {FLAVORS}, not {flavor!r}")

    def make(partial: Path) -> tuple[dict, dict]:
        ids = build_tokenizer(partial, flavor)
        config = model_config(ids, flavor)
        write_processor_files(partial, ids, flavor)
        weights, quantization = random_weights(config, ids, seed)
        config["quantization"] = config["quantization_config"] = quantization
        return config, weights

    return write_model(out_dir, make)


def main(argv: list[str] | None = None) -> int:
    return cli(argv, "worker_vision.tiny_llava", __doc__, build, flavor=FLAVORS)


if __name__ == "__main__":
    sys.exit(main())

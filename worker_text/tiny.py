"""`python -m worker_text.tiny OUTDIR`: a tiny random-weight llama model for tests and demos.

`python -m worker_text.tiny OUTDIR --like MODEL_DIR`: a random-weight twin of a real model
(same config and tokenizer, fresh 4-bit weights), for benchmarks on machines that cannot fetch
the real weights: every step costs what the real model's does, and only the text is nonsense.

It loads in well under a second and decodes hundreds of tokens per second on a CPU, so tests
exercise the real mlx-lm path without a real model. Its tokenizer is a byte-level BPE trained
here on a few sentences (deterministic), with ChatML special tokens and chat template. The
end-of-turn token's output row is zeroed so greedy decoding never ends early by chance:
lengths in tests are then set by max_tokens and stop sequences, not by luck.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHATML = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
TOOLS_TEMPLATE = (
    # Our own template in the Qwen2.5 / Hermes tool format (mlx-lm infers `json_tools` from
    # `<tool_call>` and `tool_call.name`): tools in the system turn, calls in <tool_call> tags.
    "{%- if tools %}<|im_start|>system\n{% if messages[0]['role'] == 'system' %}{{ messages[0]['content'] }}\n\n"
    "{% endif %}# Tools\n\nYou may call functions. Their signatures:\n<tools>{% for tool in tools %}\n"
    "{{ tool | tojson }}{% endfor %}\n</tools>\n\n"
    "For each call, return a JSON object in <tool_call></tool_call> tags:\n"
    '<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call><|im_end|>\n'
    "{%- elif messages[0]['role'] == 'system' %}<|im_start|>system\n{{ messages[0]['content'] }}<|im_end|>\n{% endif %}"
    "{%- for message in messages %}{% if message['role'] == 'system' %}"
    "{% elif message['role'] == 'assistant' and message.tool_calls %}<|im_start|>assistant\n"
    "{% if message['content'] %}{{ message['content'] }}\n{% endif %}{% for tool_call in message.tool_calls %}"
    "{% if tool_call.function is defined %}{% set tool_call = tool_call.function %}{% endif %}"
    '<tool_call>\n{"name": "{{ tool_call.name }}", "arguments": {{ tool_call.arguments | tojson }}}\n</tool_call>'
    "{% endfor %}<|im_end|>\n"
    "{% elif message['role'] == 'tool' %}<|im_start|>user\n<tool_response>\n{{ message['content'] }}\n"
    "</tool_response><|im_end|>\n"
    "{% else %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
TOOL_TOKENS = ["<tool_call>", "</tool_call>"]
THINK_TEMPLATE = CHATML.replace(
    # Qwen3's way: the generation prompt opens the thinking block, or (thinking off) closes an
    # empty one; mlx-lm sees <think> and </think> in the vocabulary and passes enable_thinking.
    "<|im_start|>assistant\n{% endif %}",
    "<|im_start|>assistant\n{% if enable_thinking is defined and enable_thinking is false %}"
    "<think>\n\n</think>\n\n{% else %}<think>\n{% endif %}{% endif %}",
)
THINK_TOKENS = ["<think>", "</think>"]
FLAVORS = {"chat": (CHATML, []), "tools": (TOOLS_TEMPLATE, TOOL_TOKENS), "think": (THINK_TEMPLATE, THINK_TOKENS)}
"""Chat template and added tokens of each kind of tiny model."""
CORPUS = [
    "The capital of France is Paris. The quick brown fox jumps over the lazy dog.",
    "Hello, world! Wörter mit Umlauten, 日本語のテキスト, emojis 🙂 and numbers 0123456789.",
    "user assistant system: what is the answer? It is forty-two.",
] * 20
CONFIG = {
    "model_type": "llama",
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "intermediate_size": 128,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "max_position_embeddings": 2048,
    "tie_word_embeddings": False,
}
VOCAB_SIZE = 512


def build_tokenizer(added: list[str] | None = None):
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(CORPUS, trainer=trainer)
    if added:  # plain added tokens (not special): they are text too, as Qwen's <tool_call> is
        tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in added])
    return tokenizer


def build(out_dir: Path, seed: int = 0, flavor: str = "chat", **config_overrides) -> Path:
    """A random-weight llama with a small trained BPE tokenizer and a ChatML template (the
    `tools` flavor: the tool-calling template and its tag tokens; `think`: a thinking block);
    `config_overrides` change its shape (a wider one makes prefill cost measurable)."""
    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_lm.models import llama

    template, added = FLAVORS[flavor]
    tokenizer = build_tokenizer(added)
    config = {**CONFIG, **config_overrides, "vocab_size": tokenizer.get_vocab_size()}
    mx.random.seed(seed)
    model = llama.Model(llama.ModelArgs.from_dict(config))
    _never_end(model, [tokenizer.token_to_id("<|im_end|>")])

    return _write_model_dir(
        out_dir,
        dict(tree_flatten(model.parameters())),
        config,
        lambda partial: _write_tokenizer(tokenizer, partial, config, template),
    )


def build_twin(source: Path, out_dir: Path, seed: int = 0, bits: int = 4, group_size: int = 64) -> Path:
    import mlx.core as mx
    import mlx.nn as nn
    from mlx.utils import tree_flatten
    from mlx_lm.utils import _get_classes  # mlx-lm 0.32.2 (pinned)

    config = json.loads((source / "config.json").read_text())
    config.pop("quantization", None)
    config.pop("quantization_config", None)
    model_class, args_class = _get_classes(config)
    mx.random.seed(seed)
    model = model_class(args_class.from_dict(config))
    eos = config.get("eos_token_id")
    _never_end(model, eos if isinstance(eos, list) else [eos] if eos is not None else [])
    nn.quantize(model, group_size=group_size, bits=bits)
    config["quantization"] = {"group_size": group_size, "bits": bits}

    def copy_tokenizer(partial: Path) -> None:
        for path in source.iterdir():  # tokenizer files, chat template, generation config
            if path.is_file() and path.suffix != ".safetensors" and path.name != "config.json":
                shutil.copy(path, partial / path.name)

    return _write_model_dir(out_dir, dict(tree_flatten(model.parameters())), config, copy_tokenizer)


def padded_tokenizer(vocab_size: int):
    """The tiny byte-level BPE tokenizer grown to `vocab_size` entries with made-up words, so
    a random model of a real shape (151,936 ids for Qwen2.5) can decode every id it samples."""
    from tokenizers import Tokenizer

    data = json.loads(build_tokenizer().to_str())
    vocab = data["model"]["vocab"]
    n = 0
    while len(vocab) < vocab_size:
        word, rest = "", n
        while True:  # n in base 26: a, b, …, z, ba, bb, …
            word, rest = chr(ord("a") + rest % 26) + word, rest // 26
            if not rest:
                break
        vocab.setdefault("Ġ" + word, len(vocab))  # Ġ is byte-level BPE's space
        n += 1
    return Tokenizer.from_str(json.dumps(data))


def build_shaped(out_dir: Path, config: dict, bits: int | None = 4, group_size: int = 64, seed: int = 0) -> Path:
    """A random-weight model of any mlx-lm architecture and size (`config` as in a
    config.json), bf16 or quantized, with a padded tokenizer and a ChatML template: for
    benchmarks of real model shapes on machines that cannot download the real weights."""
    import mlx.core as mx
    import mlx.nn as nn
    from mlx.utils import tree_flatten
    from mlx_lm.utils import _get_classes  # mlx-lm 0.32.2 (pinned)

    tokenizer = padded_tokenizer(config["vocab_size"])
    config = {**config, "torch_dtype": "bfloat16"}
    model_class, args_class = _get_classes(config)
    mx.random.seed(seed)
    model = model_class(args_class.from_dict(config))
    model.set_dtype(mx.bfloat16)
    _never_end(model, [tokenizer.token_to_id("<|im_end|>")])
    if bits:
        nn.quantize(model, group_size=group_size, bits=bits)
        config["quantization"] = {"group_size": group_size, "bits": bits}
    return _write_model_dir(
        out_dir,
        dict(tree_flatten(model.parameters())),
        config,
        lambda partial: _write_tokenizer(tokenizer, partial, config),
    )


def _write_tokenizer(tokenizer, partial: Path, config: dict, template: str = CHATML) -> None:
    tokenizer.save(str(partial / "tokenizer.json"))
    (partial / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "PreTrainedTokenizerFast",
                "eos_token": "<|im_end|>",
                "pad_token": "<|endoftext|>",
                "chat_template": template,
                "model_max_length": config["max_position_embeddings"],
            },
            indent=1,
        )
    )


def _never_end(model, tokens: list[int]) -> None:
    """Zero the output rows of end tokens: greedy decoding then never ends early by chance,
    and lengths come from max_tokens and stop sequences."""
    head = getattr(model, "lm_head", None) or model.model.embed_tokens
    for token in tokens:
        head.weight[token] = 0.0


def _write_model_dir(out_dir: Path, weights: dict, config: dict, write_tokenizer) -> Path:
    """Write next to the target, then rename: a half-written model never looks complete."""
    import mlx.core as mx

    partial = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    mx.save_safetensors(str(partial / "model.safetensors"), weights, metadata={"format": "mlx"})
    (partial / "config.json").write_text(json.dumps(config, indent=1))
    write_tokenizer(partial)
    shutil.rmtree(out_dir, ignore_errors=True)
    partial.rename(out_dir)
    return out_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m worker_text.tiny", description=__doc__.split("\n")[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--flavor", choices=sorted(FLAVORS), default="chat", help="chat template and its tokens")
    parser.add_argument(
        "--like",
        type=Path,
        metavar="MODEL_DIR",
        help="build a random 4-bit twin of this model (its config and tokenizer)",
    )
    args = parser.parse_args(argv)
    if args.like:
        print(f"wrote {build_twin(args.like, args.out_dir, args.seed)}")
    else:
        print(f"wrote {build(args.out_dir, args.seed, flavor=args.flavor)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""GGUF import: tiny llama GGUFs written here (with llama.cpp's `gguf` package) are imported,
loaded with mlx-lm, and their logits compared with a reference llama built directly from the
same weights in Hugging Face layout (Q/K not permuted, rope_traditional False). Agreement
proves the tensor-name map, the Q/K permutation handling and the config, not just loading.
"""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import mlx.core as mx
import mlx_lm
import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q
from mlx_lm.models import llama

from contract.carriers import default_models_dir
from worker_text.gguf import GGUFImportError, import_gguf
from worker_text.models import main

HIDDEN, HEADS, KV_HEADS, FFN, LAYERS = 64, 4, 2, 128, 2
HEAD_DIM = HIDDEN // HEADS
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
MERGES = ["H e", "l l", "He ll", "Hell o", "Ġ w", "Ã ¶", "Ġw Ã¶", "r l", "rl d"]
CHATML = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
PROMPT_IDS = [1, 50, 80, 90, 100, 2, 7, 260]


def byte_chars() -> list[str]:
    """GPT-2's byte -> printable character table, in byte order."""
    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
    extra = iter(range(256, 512))
    return [chr(b) if b in printable else chr(next(extra)) for b in range(256)]


TOKENS = SPECIALS + byte_chars() + ["".join(m.split()) for m in MERGES]
TOKEN_TYPES = [3] * len(SPECIALS) + [1] * (len(TOKENS) - len(SPECIALS))


def permute(w: np.ndarray, n_heads: int) -> np.ndarray:
    """llama.cpp's convert_hf_to_gguf permutation of Q/K rows (for interleaved RoPE)."""
    return w.reshape(n_heads, 2, w.shape[0] // n_heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def unpermute(w: np.ndarray, n_heads: int) -> np.ndarray:
    return w.reshape(n_heads, w.shape[0] // n_heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def encode_tensor(arr: np.ndarray, qtype: Q) -> tuple[np.ndarray, np.ndarray]:
    """(what to write, what it decodes to in float32)."""
    if qtype == Q.F32:
        return arr, arr
    if qtype == Q.F16:
        return arr.astype(np.float16), arr.astype(np.float16).astype(np.float32)
    if qtype in (Q.Q6_K, Q.Q4_K):  # gguf-py cannot quantize these: zero blocks, never loaded
        block, size = gguf.constants.GGML_QUANT_SIZES[qtype]
        return np.zeros((arr.shape[0], size), np.uint8), arr
    data = gguf.quants.quantize(arr, qtype)
    return data, gguf.quants.dequantize(data, qtype).astype(np.float32)


def write_gguf(
    path: Path,
    layer_type: Q = Q.F32,
    embd_type: Q | None = None,
    output_type: Q | None = None,
    arch: str = "llama",
    drop_keys: tuple[str, ...] = (),
    extra_tensors: tuple[str, ...] = (),
    tensor_types: dict[str, Q] | None = None,
) -> dict:
    """Write a 2-layer llama GGUF; return its weights as HF-layout float32 (after the type's
    round trip). `output_type` None means tied embeddings (no output.weight); `tensor_types`
    overrides the type of single tensors by GGUF name."""
    rng = np.random.default_rng(0)
    normal = lambda *shape: (rng.standard_normal(shape) / np.sqrt(shape[-1])).astype(np.float32)  # noqa: E731
    hf = {
        "model.embed_tokens.weight": (normal(len(TOKENS), HIDDEN) * 4, embd_type or layer_type, "token_embd.weight"),
        "model.norm.weight": (1 + 0.1 * normal(HIDDEN), Q.F32, "output_norm.weight"),
    }
    if output_type is not None:
        hf["lm_head.weight"] = (normal(len(TOKENS), HIDDEN), output_type, "output.weight")
    shapes = {
        "attn_q": (HEADS * HEAD_DIM, HIDDEN),
        "attn_k": (KV_HEADS * HEAD_DIM, HIDDEN),
        "attn_v": (KV_HEADS * HEAD_DIM, HIDDEN),
        "attn_output": (HIDDEN, HEADS * HEAD_DIM),
        "ffn_gate": (FFN, HIDDEN),
        "ffn_up": (FFN, HIDDEN),
        "ffn_down": (HIDDEN, FFN),
    }
    names = {
        "attn_q": "self_attn.q_proj",
        "attn_k": "self_attn.k_proj",
        "attn_v": "self_attn.v_proj",
        "attn_output": "self_attn.o_proj",
        "ffn_gate": "mlp.gate_proj",
        "ffn_up": "mlp.up_proj",
        "ffn_down": "mlp.down_proj",
    }
    for i in range(LAYERS):
        for stem, shape in shapes.items():
            hf[f"model.layers.{i}.{names[stem]}.weight"] = (normal(*shape), layer_type, f"blk.{i}.{stem}.weight")
        for stem, hf_name in (("attn_norm", "input_layernorm"), ("ffn_norm", "post_attention_layernorm")):
            hf[f"model.layers.{i}.{hf_name}.weight"] = (1 + 0.1 * normal(HIDDEN), Q.F32, f"blk.{i}.{stem}.weight")

    writer = gguf.GGUFWriter(str(path), arch)
    metadata = {
        f"{arch}.block_count": ("uint32", LAYERS),
        f"{arch}.context_length": ("uint32", 256),
        f"{arch}.embedding_length": ("uint32", HIDDEN),
        f"{arch}.feed_forward_length": ("uint32", FFN),
        f"{arch}.attention.head_count": ("uint32", HEADS),
        f"{arch}.attention.head_count_kv": ("uint32", KV_HEADS),
        f"{arch}.rope.freq_base": ("float32", 10000.0),
        f"{arch}.attention.layer_norm_rms_epsilon": ("float32", 1e-5),
        "tokenizer.ggml.model": ("string", "gpt2"),
        "tokenizer.ggml.pre": ("string", "smollm"),
        "tokenizer.ggml.tokens": ("array", TOKENS),
        "tokenizer.ggml.merges": ("array", MERGES),
        "tokenizer.ggml.token_type": ("array", TOKEN_TYPES),
        "tokenizer.ggml.bos_token_id": ("uint32", 1),
        "tokenizer.ggml.eos_token_id": ("uint32", 2),
        "tokenizer.ggml.add_bos_token": ("bool", False),
        "tokenizer.chat_template": ("string", CHATML),
    }
    for key, (kind, value) in metadata.items():
        if key not in drop_keys:
            getattr(writer, f"add_{kind}")(key, value)
    reference = {}
    for hf_name, (arr, qtype, gguf_name) in hf.items():
        heads = HEADS if ".q_proj" in hf_name else KV_HEADS if ".k_proj" in hf_name else None
        qtype = (tensor_types or {}).get(gguf_name, qtype)
        data, decoded = encode_tensor(permute(arr, heads) if heads else arr, qtype)
        writer.add_tensor(gguf_name, data, raw_dtype=qtype if qtype not in (Q.F32, Q.F16) else None)
        reference[hf_name] = unpermute(decoded, heads) if heads else decoded
    for name in extra_tensors:
        writer.add_tensor(name, np.ones(HIDDEN, np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return reference


def reference_logits(weights: dict, ids: list[int]) -> np.ndarray:
    args = llama.ModelArgs(
        model_type="llama",
        hidden_size=HIDDEN,
        num_hidden_layers=LAYERS,
        intermediate_size=FFN,
        num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS,
        rms_norm_eps=1e-5,
        vocab_size=len(TOKENS),
        rope_theta=10000.0,
        rope_traditional=False,
        tie_word_embeddings="lm_head.weight" not in weights,
    )
    model = llama.Model(args)
    model.load_weights([(k, mx.array(v)) for k, v in weights.items()])
    return np.array(model(mx.array([ids]))[0].astype(mx.float32))


# name: (layer type, embedding type, output type or None for tied), tolerance relative to the
# largest logit. Measured: Q* ~1e-3 (float16 scales and activations), F16/F32 ~5e-7; a wrong
# rope_traditional alone gives ~0.3, so these bounds separate right from wrong by 60x or more.
CASES = {
    "Q4_0": ((Q.Q4_0, None, Q.Q4_0), 5e-3),
    "Q4_1": ((Q.Q4_1, None, None), 5e-3),
    "Q8_0": ((Q.Q8_0, None, None), 5e-3),
    "F16": ((Q.F16, None, Q.F16), 1e-4),
    "F32": ((Q.F32, None, None), 1e-5),
    "mixed": ((Q.Q4_1, Q.Q8_0, Q.F16), 5e-3),  # like SmolLM2's file: Q4_1 layers, Q8_0 embedding
}


@pytest.mark.parametrize("case", CASES)
def test_import_matches_reference_logits(tmp_path: Path, case: str) -> None:
    (layer_type, embd_type, output_type), tolerance = CASES[case]
    reference = write_gguf(tmp_path / "tiny.gguf", layer_type, embd_type, output_type)
    out = import_gguf(tmp_path / "tiny.gguf", tmp_path / "tiny", progress=False)
    model, _ = mlx_lm.load(str(out))
    got = np.array(model(mx.array([PROMPT_IDS]))[0].astype(mx.float32))
    want = reference_logits(reference, PROMPT_IDS)
    assert np.abs(got - want).max() <= tolerance * np.abs(want).max()


def test_mixed_bit_widths_get_per_module_quantization(tmp_path: Path) -> None:
    write_gguf(tmp_path / "tiny.gguf", Q.Q4_1, Q.Q8_0, Q.F16)
    config = json.loads((import_gguf(tmp_path / "tiny.gguf", tmp_path / "m") / "config.json").read_text())
    assert config["quantization"] == {
        "group_size": 32,
        "bits": 4,
        "mode": "affine",
        "lm_head": False,
        "model.embed_tokens": {"group_size": 32, "bits": 8, "mode": "affine"},
    }
    assert config["rope_traditional"] is True and config["tie_word_embeddings"] is False


def test_float_import_has_no_quantization(tmp_path: Path) -> None:
    write_gguf(tmp_path / "tiny.gguf", Q.F16)
    config = json.loads((import_gguf(tmp_path / "tiny.gguf", tmp_path / "m") / "config.json").read_text())
    assert "quantization" not in config and config["tie_word_embeddings"] is True


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("tok")
    write_gguf(tmp / "tiny.gguf", Q.F32)
    return mlx_lm.load(str(import_gguf(tmp / "tiny.gguf", tmp / "m", progress=False)))[1]


def test_tokenizer_round_trip_uses_merges(tokenizer) -> None:
    ids = tokenizer.encode("Hello, wörld")
    assert [TOKENS[i] for i in ids] == ["Hello", ",", "ĠwÃ¶", "rld"]
    assert tokenizer.decode(ids) == "Hello, wörld"
    assert tokenizer.eos_token_id == 2 and tokenizer.eos_token == "<|im_end|>"


def test_chat_template_renders(tokenizer) -> None:
    messages = [{"role": "user", "content": "Hi"}]
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert text == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    assert tokenizer.encode(text)[0] == TOKENS.index("<|im_start|>")


@pytest.mark.parametrize(
    "kwargs, expected",
    [
        ({"arch": "qwen2"}, "architecture 'qwen2' is not supported"),
        ({"layer_type": Q.Q5_0}, "unsupported type Q5_0"),
        ({"layer_type": Q.BF16}, "unsupported type BF16"),  # mx.load would silently give float16
        ({"tensor_types": {"blk.1.ffn_down.weight": Q.Q6_K}}, "'blk.1.ffn_down.weight' has unsupported type Q6_K"),
        ({"extra_tensors": ("rope_freqs.weight",)}, "unknown tensor 'rope_freqs.weight'"),
        ({"drop_keys": ("llama.block_count",)}, "missing metadata 'llama.block_count'"),
        ({"drop_keys": ("tokenizer.ggml.merges",)}, "missing metadata 'tokenizer.ggml.merges'"),
        ({"drop_keys": ("llama.attention.head_count_kv",)}, "does not load: Expected shape"),  # K/V shapes disagree
    ],
)
def test_refusals(tmp_path: Path, kwargs: dict, expected: str) -> None:
    write_gguf(tmp_path / "bad.gguf", **kwargs)
    with pytest.raises(GGUFImportError, match=expected) as info:
        import_gguf(tmp_path / "bad.gguf", tmp_path / "m", progress=False)
    assert str(info.value).startswith("bad.gguf: ") and str(tmp_path) not in str(info.value)
    assert not (tmp_path / "m").exists() and not (tmp_path / "m.partial").exists()


def test_not_a_gguf_file(tmp_path: Path) -> None:
    (tmp_path / "noise.gguf").write_bytes(np.random.default_rng(1).bytes(4096))
    with pytest.raises(GGUFImportError, match="noise.gguf: not a GGUF file"):
        import_gguf(tmp_path / "noise.gguf", tmp_path / "m", progress=False)


def test_truncated_file(tmp_path: Path) -> None:
    write_gguf(tmp_path / "t.gguf")
    (tmp_path / "t.gguf").write_bytes((tmp_path / "t.gguf").read_bytes()[:200])
    with pytest.raises(GGUFImportError, match="truncated or corrupt"):
        import_gguf(tmp_path / "t.gguf", tmp_path / "m", progress=False)


@pytest.mark.parametrize("name", ["../x", "a/b", ".hidden", "..", "", "x.partial"])
def test_cli_refuses_bad_names(tmp_path: Path, capsys: pytest.CaptureFixture, name: str) -> None:
    (tmp_path / "f.gguf").write_bytes(b"GGUF")
    assert main(["import-gguf", str(tmp_path / "f.gguf"), name, "--models-dir", str(tmp_path / "models")]) == 2
    assert capsys.readouterr().err.startswith(f"error: invalid model name {name!r}")
    assert not (tmp_path / "models").exists()


def test_cli_import_exists_and_force(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    write_gguf(tmp_path / "tiny.gguf", Q.Q8_0)
    argv = ["import-gguf", str(tmp_path / "tiny.gguf"), "tiny", "--models-dir", str(tmp_path / "models"), "--quiet"]
    assert main(argv) == 0 and (tmp_path / "models/tiny/config.json").exists()
    assert main(argv) == 2 and "already exists" in capsys.readouterr().err
    assert main([*argv, "--force"]) == 0 and (tmp_path / "models/tiny/model.safetensors").exists()
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["tiny"]


def test_cli_reports_refusal_without_traceback(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "noise.gguf").write_bytes(b"not gguf at all")
    assert main(["import-gguf", str(tmp_path / "noise.gguf"), "m", "--models-dir", str(tmp_path)]) == 2
    assert capsys.readouterr().err == "error: noise.gguf: not a GGUF file\n"


def test_models_dir_default_is_first_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELS_DIR", f"/a/models{__import__('os').pathsep}/b/models")
    assert default_models_dir() == Path("/a/models")
    monkeypatch.delenv("MODELS_DIR")
    assert default_models_dir() == Path("var/models")

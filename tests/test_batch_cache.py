"""Decode steps of an unpadded batch take no attention mask (worker_text/batch_cache.py), and
batched generations are identical with and without that."""

from __future__ import annotations

import mlx.core as mx
import pytest
from mlx_lm import load
from mlx_lm.models import cache as mlx_lm_cache

from tests.support import batch_generate
from worker_text.batch_cache import UnpaddedBatchKVCache
from worker_text.tiny import build


def test_mask_only_where_a_sequence_is_padded():
    assert UnpaddedBatchKVCache([0]).make_mask(1) is None
    assert UnpaddedBatchKVCache([0, 0, 0]).make_mask(1) is None
    assert isinstance(UnpaddedBatchKVCache([0, 2]).make_mask(1), mx.array)
    assert UnpaddedBatchKVCache([0]).make_mask(4) is not None  # prefill: causal


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    model, _ = load(str(build(tmp_path_factory.mktemp("batch-cache") / "tiny")))
    return model


@pytest.mark.parametrize(
    "prompts",
    [[[5, 17, 42, 99]], [[5, 17, 42], [7, 8, 9]], [[5, 17, 42, 99, 3], [7, 8], [300, 301, 302]]],
    ids=["one", "same-length", "padded"],
)
def test_generations_do_not_change(model, prompts, monkeypatch):
    plain_tokens, plain_logprobs = batch_generate(model, prompts, 10)
    monkeypatch.setattr(mlx_lm_cache, "BatchKVCache", UnpaddedBatchKVCache)
    tokens, logprobs = batch_generate(model, prompts, 10)
    assert tokens == plain_tokens
    for a, b in zip(logprobs, plain_logprobs, strict=True):
        assert mx.allclose(a, b, atol=1e-5).item()

"""Decode steps without a padding mask where a batch has no padding (mlx-lm's BatchKVCache).

mlx-lm's batched KV cache hands attention an array mask on every decode step (the positions
from each sequence's left padding on), even when no sequence in the batch is padded: one
sequence alone, or prompts of one length. On CUDA, MLX 0.32.4's fused attention kernels (its
vector kernel, cuDNN) take no array mask, so every layer's attention then falls back to
separate matmul, softmax and matmul kernels — more launches in a step whose time goes mostly
to the host launching kernels (docs/PERFORMANCE.md, "Where a one-stream decode step's time
goes"). Without padding that mask keeps every position the cache returns, so no mask means the
same; MLX then takes its fused kernel. Outputs are unchanged (tests/test_batch_cache.py).
"""

from __future__ import annotations

import sys
from typing import cast

from mlx_lm.models.cache import BatchKVCache


class UnpaddedBatchKVCache(BatchKVCache):
    def make_mask(self, N: int, return_array: bool = False, **kwargs):
        # Read on decode steps only; the padding is a few integers, long evaluated by then, so
        # reading them does not wait for the GPU.
        if (
            N == 1
            and not return_array
            and not kwargs.get("window_size")
            and not any(cast(list[int], self.left_padding.tolist()))
        ):
            return None
        return super().make_mask(N, return_array=return_array, **kwargs)


def install() -> None:
    """mlx-lm makes its batch caches through this module-level name (KVCache.merge and
    BatchKVCache.merge; pinned mlx-lm 0.32.2)."""
    sys.modules["mlx_lm.models.cache"].BatchKVCache = UnpaddedBatchKVCache  # type: ignore[attr-defined]

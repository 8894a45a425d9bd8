"""Seeded sampling: a job with a `seed` draws from its own PRNG key, so its output depends on
its seed alone, never on what other jobs in the batch drew in between (MLX's global random
state is shared by the whole process)."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import mlx.core as mx

from contract.payloads import GREEDY_BELOW, SamplingParams


class Filters(NamedTuple):
    """A sampling library's logit filters (mlx-lm and mlx-vlm each have their own versions,
    which differ in detail; each engine passes its library's, so seeded and unseeded jobs of
    one engine filter alike)."""

    apply_top_p: Callable[[mx.array, float], mx.array]
    apply_min_p: Callable[[mx.array, float], mx.array]
    apply_top_k: Callable[[mx.array, int], mx.array]


class SeededSampler:
    """The sampling chain (top-p, min-p, top-k, then temperature), drawing from its own key."""

    def __init__(self, params: SamplingParams, filters: Filters, top_k: int | None = None):
        self.key = mx.random.key(params.seed if params.seed is not None else 0)
        top_k = params.top_k if top_k is None else top_k
        # (filter, its parameter), called positionally: mlx-lm's filters are mx.compile'd.
        chain: list[tuple[Callable, float]] = []
        if 0 < params.top_p < 1.0:
            chain.append((filters.apply_top_p, params.top_p))
        if params.min_p != 0.0:
            chain.append((filters.apply_min_p, params.min_p))
        if top_k > 0:
            chain.append((filters.apply_top_k, top_k))
        self.filters = chain
        # SamplingParams.normalized sends temperatures below GREEDY_BELOW to the greedy
        # sampler; the bound here only guards 1/temperature for any caller that did not.
        self.inverse_temperature = 1.0 / max(params.temperature, GREEDY_BELOW)

    def __call__(self, logprobs: mx.array) -> mx.array:
        for apply, value in self.filters:
            logprobs = apply(logprobs, value)
        self.key, subkey = mx.random.split(self.key)
        return mx.random.categorical(logprobs * self.inverse_temperature, key=subkey)

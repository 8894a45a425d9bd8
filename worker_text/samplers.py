"""Samplers for the text engine's batch: one object per distinct setting (mlx-lm batches rows
that share a sampler object), a private one for a seeded job."""

from __future__ import annotations

from mlx_lm.sample_utils import apply_min_p, apply_top_k, apply_top_p, greedy_sampler, make_sampler

from contract.payloads import SamplingParams
from mlx_common.sampling import Filters, SeededSampler

FILTERS = Filters(apply_top_p, apply_min_p, apply_top_k)
"""mlx-lm's logit filters, for seeded samplers (mlx_common.sampling)."""


class SamplerCache:
    """One sampler object per distinct setting: jobs that share one are sampled in one call
    for the whole batch (mlx-lm batches rows whose sampler is the same object). A seeded job
    gets a sampler of its own with a private random key, so its output depends on its seed
    alone, never on what else shares the batch."""

    def __init__(self):
        self.shared: dict[tuple, object] = {}

    def get(self, params: SamplingParams):
        if params.temperature == 0:
            return greedy_sampler
        if params.seed is not None:
            return SeededSampler(params, FILTERS)
        key = (params.temperature, params.top_p, params.min_p, params.top_k)
        if key not in self.shared:
            if len(self.shared) > 256:
                self.shared.clear()
            self.shared[key] = make_sampler(
                temp=params.temperature, top_p=params.top_p, min_p=params.min_p, top_k=params.top_k
            )
        return self.shared[key]

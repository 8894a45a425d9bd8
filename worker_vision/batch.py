"""The decoding jobs of a vision worker in one batch: one forward pass gives every job its next
token's logits.

Each job prefills into KV caches of its own (worker_vision/engine.py: chunked, the shortest
prompt first); when its first token is sampled it joins the batch: its caches are merged in as
one more row of mlx-vlm's batch caches (`KVCache.merge` → `BatchKVCache`: left-padded, with
per-row offsets and the padding masked), and a job that ends leaves with `filter`. This is
what mlx-vlm's own BatchGenerator does between its prompt and generation phases; the jobs'
sampling, penalties, grammars, stops and logprobs stay the engine's, per job.

Positions: a Qwen-VL language model keeps the current sequence's mRoPE offsets on the shared
model object, so the batch hands it every row's position explicitly, on mRoPE's three axes
(for a text-only row the three are equal, which is what its plain positions mean). Other
families place each row by its cache offset (the batch caches keep one per row).
"""

from __future__ import annotations

import mlx.core as mx


class DecodeBatch:
    """Rows of decoding jobs and their merged caches. Only the engine thread may call it."""

    def __init__(self, language_model):
        self.lm = language_model
        self.rows: list[str] = []
        """Job ids, in the caches' row order."""
        self.cache: list | None = None

    def __len__(self) -> int:
        return len(self.rows)

    def join(self, job_id: str, cache: list) -> None:
        """A job whose prompt is read: its caches (one per layer) become the batch's last row."""
        merged = [type(layer).merge([layer]) for layer in cache]
        if self.cache is None:
            self.cache = merged
        else:
            for rows, row in zip(self.cache, merged, strict=True):
                rows.extend(row)
        self.rows.append(job_id)

    def leave(self, job_ids: set[str]) -> None:
        keep = [i for i, job_id in enumerate(self.rows) if job_id not in job_ids]
        if len(keep) == len(self.rows):
            return
        self.rows = [self.rows[i] for i in keep]
        if not keep:
            self.cache = None
            return
        assert self.cache is not None  # rows were there
        indices = mx.array(keep)
        for layer in self.cache:
            layer.filter(indices)

    def logits(self, tokens: list[mx.array], positions: list[int] | None) -> mx.array:
        """(rows, vocabulary) logits after each row's token (in row order); `positions`: each
        row's mRoPE position, for Qwen-VL models (None: the caches' offsets place them)."""
        batch = len(tokens)
        extra = {}
        if positions is not None:
            at = mx.array(positions, dtype=mx.int32).reshape(1, batch, 1)
            extra["position_ids"] = mx.broadcast_to(at, (3, batch, 1))
        return self.lm(mx.concatenate(tokens).reshape(batch, 1), cache=self.cache, **extra).logits[:, -1, :]

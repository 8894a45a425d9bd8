"""Constrained rows of the text engine's batch, masked together in one step.

mlx-lm calls logits processors row by row (a slice, a token-context update, the processor,
a concatenation per row); measured on an H200 that path, not the masks, cost constrained
decoding ~20 % (docs/PERFORMANCE.md). So the text engine does not hand its grammars to
mlx-lm as processors: `GrammarBatch`, mlx-lm's `GenerationBatch` with its model call wrapped
for one step, starts the step's forward pass, then reads the tokens being fed (waiting for the
previous step's sampling only: the one synchronisation a grammar needs), advances every
constrained row's matcher and computes all their masks in one llguidance call (Rust threads,
off the GIL) while the model runs, and masks the whole batch's logits with one `where`.
Rows without a grammar get an all-ones mask.

mlx-lm makes its batches by the module-level name `GenerationBatch` (including the one whose
constructor samples a request's first token), so `install()` points that name at this
subclass; mlx-lm is pinned (0.32.2). Engines register their constrained rows by model object.
"""

from __future__ import annotations

import sys
import time
from typing import Any, cast

import llguidance
import llguidance.numpy
import mlx.core as mx
import numpy as np
from mlx_lm.generate import GenerationBatch

from mlx_common.grammar import GrammarProcessor, mask_logits, words_for

_ROWS: dict[int, dict[int, GrammarProcessor]] = {}
"""id(model) → {mlx-lm uid: the grammar of that request}."""
_EXECUTOR = llguidance.LLExecutor()


def rows_of(model: Any) -> dict[int, GrammarProcessor]:
    """The constrained rows of the batches of `model` (the engine adds and removes them)."""
    return _ROWS.setdefault(id(model), {})


class GrammarBatch(GenerationBatch):
    def _step(self):
        rows = _ROWS.get(id(self.model))
        if not rows or not any(uid in rows for uid in self.uids):
            return super()._step()
        model = self.model
        # The tokens this step feeds (sampled last step, already queued), read as they are: a
        # new op on them (`inputs[:, -1]`) would be queued behind this step's forward pass.
        fed = self._next_tokens

        def forward(inputs: mx.array, cache=None) -> mx.array:
            logits = model(inputs, cache=cache)
            # Start the forward pass, then wait for the fed tokens alone: the masks are
            # computed while the model runs (tiny-text 0.65-0.71x -> 0.76-0.87x).
            mx.async_eval(logits)
            return _masked(logits, cast(list[int], fed.tolist()), self.uids, rows)

        self.model = forward  # type: ignore[assignment]  # for this step: the model, then the masks
        try:
            return super()._step()
        finally:
            self.model = model


def _masked(logits: mx.array, fed: list[int], uids: list[int], rows: dict[int, GrammarProcessor]) -> mx.array:
    active = [(row, rows[uid]) for row, uid in enumerate(uids) if uid in rows]
    vocab = active[0][1].vocab_size
    started = time.perf_counter()
    bitmask = np.full((len(uids), words_for(vocab)), -1, dtype=np.int32)  # all allowed
    ready = []
    for row, grammar in active:
        grammar.advance(fed[row])
        if not grammar.fallback(bitmask[row]):
            ready.append((grammar.matcher, row))
    if ready:
        llguidance.numpy.fill_next_token_bitmask_par(_EXECUTOR, ready, bitmask)
    spent = time.perf_counter() - started
    for _, grammar in active:
        grammar.mask_s += spent / len(active)
        grammar.steps += 1
    return mask_logits(logits, bitmask, vocab)


def install() -> None:
    """mlx-lm makes every generation batch through this name (pinned mlx-lm 0.32.2)."""
    # `mlx_lm.generate` the attribute is mlx-lm's generate() function; the module is here.
    sys.modules["mlx_lm.generate"].GenerationBatch = GrammarBatch  # type: ignore[attr-defined]

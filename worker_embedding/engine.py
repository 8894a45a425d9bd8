"""The embedding worker's engine (runtime.engine_loop.Engine): inputs of many requests packed
into batches of like length, one batch a step.

Embedding is prefill only, so it batches nearly perfectly — if the rows of a batch have about
the same length (a batch is padded to its longest row). Every request's inputs are queued one
by one; each step takes the next input in turn — interactive before batch work, then the
request with the fewest inputs left, then the oldest — with the waiting inputs (of any
request) nearest it in length, up to MAX_BATCH rows (CPU_MAX_BATCH on a CPU) and
MAX_BATCH_TOKENS padded tokens (`pick_batch`). So one request's 2,000 chunks and another's
single query share the engine: the query waits at most one batch, and rides in the chunks'
next one.
A request ends, with its vectors in input order, once its last input is embedded.

No Redis here: the engine returns stream events for the engine thread to send. The vectors
travel in the `done` event as raw float32 bytes (4 a dimension; contract.stream puts bytes in
a field of their own), which the API turns into OpenAI's floats or base64.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from contract.payloads import EmbedJob
from contract.stream import EventType
from runtime.rejections import RequestRejected
from runtime.steps import StepEvent

from .loading import EmbeddingModel

MAX_BATCH = 64
"""Rows per forward pass on a GPU, where a pass costs about the same for 1 row as for 64."""
CPU_MAX_BATCH = 16
"""Rows per forward pass on a CPU, where batching saves little (MLX's CPU wheel: 8 MiniLM
sentences in one pass 2.9 s, one at a time 2.1–2.3 s) and smaller cuts pad less."""
MAX_BATCH_TOKENS = 16384
"""Padded tokens per forward pass (rows x longest row): bounds the attention's memory."""


class InputTooLong(RequestRejected):
    code = "context_length_exceeded"


@dataclass
class _Request:
    job_id: str
    job: EmbedJob
    inputs: list[list[int]]
    order: int
    vectors: dict[int, np.ndarray] = field(default_factory=dict)

    @property
    def tokens(self) -> int:
        return sum(len(ids) for ids in self.inputs)


@dataclass(frozen=True)
class _Item:
    """One input waiting for its batch."""

    batch: bool
    order: int
    index: int
    job_id: str
    length: int


def pick_batch(waiting: list[_Item], turn: Callable[[_Item], tuple], max_rows: int, max_tokens: int) -> list[_Item]:
    """The next batch: the input whose turn it is, with the waiting inputs nearest it in length.

    The waiting inputs, sorted by length, are cut into consecutive batches from the shortest
    up — each as many rows as `max_rows` and `max_tokens` padded tokens allow, as a sorted loop
    would cut them — and the batch holding the input whose turn it is runs. So batches are as
    few and as tight as a sorted loop's (launches dominate on a GPU, padding on a CPU), an
    input whose turn comes rides in the very next batch, and taking a batch out leaves the
    others' cuts as they were.
    """
    ranked = sorted(waiting, key=lambda i: (i.length, turn(i)))
    at = ranked.index(min(waiting, key=turn))
    start = 0
    while True:
        end = start + 1  # a lone input longer than max_tokens still runs, alone
        while end < len(ranked) and end - start < max_rows and (end - start + 1) * ranked[end].length <= max_tokens:
            end += 1
        if at < end:
            return ranked[start:end]
        start = end


class EmbedEngine:
    """Only the engine thread may call it."""

    def __init__(self, model: EmbeddingModel, max_batch: int | None = None, max_batch_tokens: int = MAX_BATCH_TOKENS):
        import mlx.core as mx

        self.model, self.encoder = model, model.encoder
        if max_batch is None:
            max_batch = CPU_MAX_BATCH if mx.default_device() == mx.cpu else MAX_BATCH
        self.max_batch, self.max_batch_tokens = max_batch, max_batch_tokens
        self.requests: dict[str, _Request] = {}
        self.waiting: list[_Item] = []
        self._order = 0

    @property
    def context_length(self) -> int:
        """Tokens one input may have; published in the registry."""
        return self.encoder.max_tokens

    def add(self, job_id: str, job: EmbedJob) -> dict:
        inputs = self.encoder.tokenize(job.texts) if job.texts is not None else job.tokens or []
        self._check(job, inputs)
        self._order += 1
        request = _Request(job_id, job, inputs, self._order)
        self.requests[job_id] = request
        self.waiting += [_Item(job.batch, request.order, i, job_id, len(ids)) for i, ids in enumerate(inputs)]
        return {"prompt_tokens": request.tokens, "cached_tokens": 0}

    def step(self) -> tuple[list[StepEvent], dict[str, dict]]:
        events: list[StepEvent] = []
        finished: dict[str, dict] = {}
        batch = self._next_batch()
        if not batch:
            return events, finished
        vectors = np.array(self.encoder.embed([self.requests[i.job_id].inputs[i.index] for i in batch]), copy=False)
        for item, vector in zip(batch, vectors, strict=True):
            request = self.requests[item.job_id]
            request.vectors[item.index] = vector
            if len(request.vectors) == len(request.inputs):
                done = self._done(request)
                events.append((request.job_id, EventType.DONE, done))
                finished[request.job_id] = done["usage"]
                del self.requests[request.job_id]
        return events, finished

    def remove(self, job_ids: list[str]) -> dict[str, int]:
        gone = set(job_ids)
        self.waiting = [i for i in self.waiting if i.job_id not in gone]
        return {j: 0 for j in job_ids if self.requests.pop(j, None) is not None}

    # --- helpers ---

    def _check(self, job: EmbedJob, inputs: list[list[int]]) -> None:
        limit = self.encoder.max_tokens
        for index, ids in enumerate(inputs):
            if len(ids) > limit:
                raise InputTooLong(
                    f"input {index} has {len(ids)} tokens; this model takes at most {limit} per input",
                    param="input",
                )
        if job.tokens is not None:
            vocab = self.encoder.vocab_size
            if any(not 0 <= t < vocab for ids in inputs for t in ids):
                raise RequestRejected(f"token ids must lie between 0 and {vocab - 1} for this model", param="input")
        dims = job.dimensions
        if dims is not None and dims != self.encoder.dimensions and dims not in self.model.matryoshka:
            cut = ", ".join(map(str, self.model.matryoshka)) or "none: it was not trained to be shortened"
            raise RequestRejected(
                f"this model gives {self.encoder.dimensions}-dimension vectors; dimensions it can be cut to: {cut}",
                param="dimensions",
            )

    def _next_batch(self) -> list[_Item]:
        if not self.waiting:
            return []
        left = Counter(i.job_id for i in self.waiting)

        def turn(item: _Item) -> tuple:
            # Interactive first; then the request with the fewest inputs left (a query goes
            # before the rest of a 2,000-chunk request), then arrival, then input order.
            return (item.batch, left[item.job_id], item.order, item.index)

        batch = pick_batch(self.waiting, turn, self.max_batch, self.max_batch_tokens)
        taken = set(batch)
        self.waiting = [i for i in self.waiting if i not in taken]
        return batch

    def _done(self, request: _Request) -> dict:
        vectors = np.stack([request.vectors[i] for i in range(len(request.inputs))]).astype("<f4")
        dims = request.job.dimensions or vectors.shape[1]
        if dims != vectors.shape[1]:  # Matryoshka: keep the leading dimensions, re-normalized
            vectors = vectors[:, :dims]
            vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        tokens = request.tokens
        return {
            "finish_reason": "stop",
            "usage": {"prompt_tokens": tokens, "completion_tokens": 0, "total_tokens": tokens},
            "count": len(request.inputs),
            "dimensions": dims,
            "embeddings": vectors.tobytes(),  # float32, little-endian: a stream entry field of its own
        }

"""The embedding worker's engine (runtime.engine_loop.Engine): inputs of many requests packed
into length-bucketed batches, one batch a step.

Embedding is prefill only, so it batches nearly perfectly — if the rows of a batch have about
the same length (a batch is padded to its longest row). Every request's inputs are queued one
by one; each step takes the bucket (16, 32, 64 … tokens) of the next input in turn —
interactive before batch work, then the request with the fewest inputs left, then the oldest
— and fills a batch from that bucket in the same order, up to MAX_BATCH rows and
MAX_BATCH_TOKENS padded tokens. So one request's 2,000 chunks and another's single query
share the engine: the query waits at most one batch, and rides in the chunks' next one.
A request ends, with its vectors in input order, once its last input is embedded.

No Redis here: the engine returns stream events for the engine thread to send. The vectors
travel in the `done` event as base64 float32 (4 bytes a dimension), which the API turns
into OpenAI's floats or base64.
"""

from __future__ import annotations

import base64
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from contract.payloads import EmbedJob
from contract.stream import EventType
from runtime.rejections import RequestRejected
from runtime.steps import StepEvent

from .loading import EmbeddingModel

MAX_BATCH = 64
"""Rows per forward pass."""
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


def bucket(length: int) -> int:
    """The power of two (at least 16) a row of `length` tokens is padded towards."""
    return max(16, 1 << (length - 1).bit_length())


class EmbedEngine:
    """Only the engine thread may call it."""

    def __init__(self, model: EmbeddingModel, max_batch: int = MAX_BATCH, max_batch_tokens: int = MAX_BATCH_TOKENS):
        self.model, self.encoder = model, model.encoder
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

        size = bucket(min(self.waiting, key=turn).length)
        same = sorted((i for i in self.waiting if bucket(i.length) == size), key=turn)
        batch = same[: max(1, min(self.max_batch, self.max_batch_tokens // size))]
        taken = set(batch)
        self.waiting = [i for i in self.waiting if i not in taken]
        return batch

    def _done(self, request: _Request) -> dict:
        vectors = np.stack([request.vectors[i] for i in range(len(request.inputs))]).astype(np.float32)
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
            "embeddings": base64.b64encode(vectors.tobytes()).decode(),
        }

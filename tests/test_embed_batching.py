"""How the embedding engine forms batches (worker_embedding.engine.pick_batch), as unit tests:
whose turn it is decides what runs next, the rest of a batch is its nearest neighbours in length,
and the limits hold. The end-to-end effect (a query beside 2,000 chunks) is in test_embeddings.py."""

from __future__ import annotations

import math
import random
from collections import Counter

from worker_embedding.engine import _Item, pick_batch


def items(lengths: list[int], job: str = "a", batch: bool = True, order: int = 1) -> list[_Item]:
    return [_Item(batch, order, i, job, n) for i, n in enumerate(lengths)]


def drain(waiting: list[_Item], max_rows: int = 64, max_tokens: int = 16384) -> list[list[_Item]]:
    waiting, batches = list(waiting), []
    while waiting:
        left = Counter(i.job_id for i in waiting)
        batch = pick_batch(
            waiting, lambda i, left=left: (i.batch, left[i.job_id], i.order, i.index), max_rows, max_tokens
        )
        assert batch and len(batch) <= max_rows
        assert len(batch) == 1 or len(batch) * max(i.length for i in batch) <= max_tokens
        batches.append(batch)
        taken = set(batch)
        waiting = [i for i in waiting if i not in taken]
    return batches


def padding(batches: list[list[_Item]]) -> float:
    real = sum(i.length for b in batches for i in b)
    padded = sum(len(b) * max(i.length for i in b) for b in batches)
    return padded / real - 1


def test_as_few_and_as_tight_batches_as_a_sorted_loop():
    rng = random.Random(7)
    lengths = [rng.randint(10, 60) for _ in range(1024)]
    batches = drain(items(lengths))
    assert len(batches) == math.ceil(1024 / 64)  # what a sorted loop in batches of 64 does
    ordered = sorted(lengths)
    sorted_loop = [ordered[i : i + 64] for i in range(0, 1024, 64)]
    loop_padding = sum(len(b) * max(b) for b in sorted_loop) / sum(lengths) - 1
    assert padding(batches) <= loop_padding + 0.01, (padding(batches), loop_padding)


def test_a_query_rides_in_the_next_batch_with_chunks_of_its_length():
    rng = random.Random(3)
    chunks = items([rng.randint(20, 200) for _ in range(2000)], job="chunks", order=1)
    query = _Item(False, 2, 0, "query", 12)
    first = drain([*chunks, query])[0]
    assert query in first and len(first) == 64
    assert max(i.length for i in first) <= 30  # its neighbours in length, not the oldest chunks


def test_fewest_inputs_left_goes_first_among_equals():
    big = items([30] * 200, job="big", order=1)
    small = items([100, 100], job="small", order=2)
    first = drain([*big, *small], max_rows=8)[0]
    assert all(i in first for i in small)  # older, but the big request has more left


def test_the_token_limit_bounds_a_batch_and_a_long_input_runs_alone():
    batches = drain(items([500] * 10 + [5000]), max_rows=64, max_tokens=2048)
    assert [len(b) for b in batches].count(1) >= 1
    assert all(len(b) * max(i.length for i in b) <= 2048 or len(b) == 1 for b in batches)
    assert sum(len(b) for b in batches) == 11

"""worker_text/kv_quant.py: a quantized KV cache inside mlx-lm's continuously batched
BatchGenerator, checked token for token against mlx-lm's own single-sequence quantized
generation, for memory, for extract → prompt cache → re-insert, and for its refusals.
In-process on the tiny random llama (head dim 32, so group size 32), CPU only."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import mlx.core as mx
import mlx_lm
import pytest
from mlx_lm.generate import BatchGenerator, generate_step
from mlx_lm.models import gemma2
from mlx_lm.models.cache import (
    ArraysCache,
    BatchKVCache,
    KVCache,
    LRUPromptCache,
    QuantizedKVCache,
    RotatingKVCache,
    can_trim_prompt_cache,
    load_prompt_cache,
    save_prompt_cache,
    trim_prompt_cache,
)

from worker_text.kv_quant import (
    BatchQuantizedKVCache,
    QuantizedBatchableKVCache,
    batchable,
    check_kv_quantization,
    kv_bytes_per_token,
    make_quantized_cache,
)
from worker_text.tiny import build

GROUP = 32  # the tiny model is built with head dim 32 (hidden 128, 4 heads, 2 KV heads)
N = 24  # tokens generated per sequence
LENGTHS = (5, 17, 33, 9)  # inserted together: unequal, so prefill is right-padded and finalized
LATE = 12  # inserted while the others decode


@pytest.fixture(scope="module")
def path(tmp_path_factory):
    return str(build(tmp_path_factory.mktemp("kv_quant") / "tiny-text", hidden_size=128))


@pytest.fixture(scope="module")
def model(path):
    return mlx_lm.load(path)[0]


@pytest.fixture(scope="module")
def prompts(model) -> tuple[list[list[int]], list[int]]:
    rng = random.Random(0)
    vocab = model.args.vocab_size
    together = [[rng.randrange(3, vocab) for _ in range(n)] for n in LENGTHS]
    return together, [rng.randrange(3, vocab) for _ in range(LATE)]


def reference(model, prompt: list[int], bits: int, *, quantized_prefill: bool = False, n: int = N) -> list[int]:
    """mlx-lm's single-sequence greedy generation with a quantized KV cache. As mlx-lm does
    it (`kv_bits`), the prompt is prefilled with a float cache that is quantized afterwards;
    `quantized_prefill` starts from a QuantizedKVCache instead, as the batch cache does."""
    if quantized_prefill:
        cache = [QuantizedKVCache(group_size=GROUP, bits=bits) for _ in model.layers]
        steps = generate_step(mx.array(prompt), model, max_tokens=n, prompt_cache=cache)
    else:
        steps = generate_step(
            mx.array(prompt), model, max_tokens=n, kv_bits=bits, kv_group_size=GROUP, quantized_kv_start=0
        )
    return [token for token, _ in steps]


def drain(gen: BatchGenerator, out: dict[int, list[int]], n: int = N) -> Iterator[int]:
    """Run the generator until every sequence in `out` has n tokens; yields the step count."""
    step = 0
    while any(len(tokens) < n for tokens in out.values()):
        for response in gen.next_generated():
            if response.uid in out:  # others in the batch go on decoding unwatched
                out[response.uid].append(response.token)
        step += 1
        yield step


def run_batch(model, prompts, bits: int) -> list[list[int]]:
    together, late = prompts
    gen = BatchGenerator(model, max_tokens=N, prefill_step_size=8)  # 8: prefill in several chunks
    uids = gen.insert(together, caches=[make_quantized_cache(model, bits, GROUP) for _ in together])
    out: dict[int, list[int]] = {uid: [] for uid in uids}
    for step in drain(gen, out):
        if step == 3:  # the others are decoding by now
            (uid,) = gen.insert([late], caches=[make_quantized_cache(model, bits, GROUP)])
            out[uid] = []
    return list(out.values())


def agreement(a: list[list[int]], b: list[list[int]]) -> float:
    pairs = [(x, y) for ra, rb in zip(a, b, strict=True) for x, y in zip(ra, rb, strict=True)]
    return sum(x == y for x, y in pairs) / len(pairs)


@pytest.fixture(scope="module")
def calls(model, prompts) -> dict:
    """The 8-bit batch run, counting which batch-cache methods BatchGenerator used."""
    counts = dict.fromkeys(("merge", "extend", "filter", "finalize", "extract"), 0)
    originals = {name: BatchQuantizedKVCache.__dict__[name] for name in counts}

    def counted(name, fn):
        def wrapper(*args, **kwargs):
            counts[name] += 1
            return fn(*args, **kwargs)

        return wrapper

    for name, fn in originals.items():
        wrapped = classmethod(counted(name, fn.__func__)) if isinstance(fn, classmethod) else counted(name, fn)
        setattr(BatchQuantizedKVCache, name, wrapped)
    try:
        tokens = run_batch(model, prompts, 8)
    finally:
        for name, fn in originals.items():
            setattr(BatchQuantizedKVCache, name, fn)
    return {"tokens": tokens, "counts": counts}


def test_batched_8bit_matches_mlx_lm(model, prompts, calls):
    together, late = prompts
    batched = calls["tokens"]
    assert all(calls["counts"][name] > 0 for name in ("merge", "extend", "filter", "finalize")), calls["counts"]
    mlx_lm_tokens = [reference(model, p, 8) for p in [*together, late]]
    same = agreement(batched, mlx_lm_tokens)
    exact = agreement(batched, [reference(model, p, 8, quantized_prefill=True) for p in [*together, late]])
    print(f"\n8-bit batched vs mlx-lm kv_bits=8: {same:.1%} of {len(batched) * N} tokens; "
          f"vs quantized prefill: {exact:.1%}; cache calls {calls['counts']}")  # fmt: skip
    assert [t[0] for t in batched] == [t[0] for t in mlx_lm_tokens]
    assert same >= 0.95
    assert exact >= 0.95


def test_batched_4bit(model, prompts, calls):
    together, late = prompts
    batched = run_batch(model, prompts, 4)
    exact = agreement(batched, [reference(model, p, 4, quantized_prefill=True) for p in [*together, late]])
    mlx_lm_4 = agreement(batched, [reference(model, p, 4) for p in [*together, late]])
    # The tiny random model's top two logits are often ~0.03 apart, so 4-bit noise flips some
    # argmaxes and a free-running sequence then drifts off; compare next-token choices given
    # the 8-bit run's context (teacher forcing) instead.
    forced = []
    for prompt, tokens in zip([*together, late], calls["tokens"], strict=True):
        logits = model(mx.array([prompt + tokens[:-1]]), cache=make_quantized_cache(model, 4, GROUP))
        forced.append(mx.argmax(logits[0, len(prompt) - 1 :], axis=-1).tolist())
    vs_8 = agreement(forced, calls["tokens"])
    print(f"\n4-bit batched vs quantized-prefill reference: {exact:.1%}; vs mlx-lm kv_bits=4: {mlx_lm_4:.1%}; "
          f"free-running vs 8-bit: {agreement(batched, calls['tokens']):.1%}; "
          f"next token given the 8-bit context: {vs_8:.1%}")  # fmt: skip
    assert exact >= 0.95
    assert vs_8 >= 0.7


def test_left_padding_matches_a_lone_sequence(model, prompts):
    """A left-padded batch (merge of unequal histories, then a decode step) gives each row
    the logits its sequence gives alone."""
    together, _ = prompts
    alone, caches = [], []
    for prompt in together:
        cache = make_quantized_cache(model, 8, GROUP)
        model(mx.array([prompt[:-1]]), cache=cache)
        alone.append(model(mx.array([prompt[-1:]]), cache=cache)[0, -1])
        trim_prompt_cache(cache, 1)
        caches.append(cache)
    batch = [layer[0].merge(list(layer)) for layer in zip(*caches, strict=True)]
    assert isinstance(batch[0], BatchQuantizedKVCache) and batch[0].bits == 8
    assert batch[0].left_padding.tolist() == [max(LENGTHS) - n for n in LENGTHS]
    logits = model(mx.array([[p[-1]] for p in together]), cache=batch)[:, -1]
    assert mx.allclose(logits, mx.stack(alone), atol=1e-3).item()


def test_plain_caches_are_quantized_on_the_way_in(model, prompts):
    """A sequence inserted with a plain KVCache (or a plain BatchKVCache extended in) after a
    quantized one is quantized as it joins: its codes are those a quantized cache stores.
    Layer 0 only: its keys and values do not depend on how attention was computed."""
    together, _ = prompts
    quantized, plain = make_quantized_cache(model, 8, GROUP), [KVCache() for _ in model.layers]
    model(mx.array([together[0]]), cache=quantized)
    model(mx.array([together[0]]), cache=plain)
    merged = BatchQuantizedKVCache.merge([quantized[0], plain[0]])
    single = BatchQuantizedKVCache.merge([quantized[0]])
    single.extend(BatchKVCache.merge([plain[0]]))
    for batch in (merged, single):
        keys, values = batch.keys_and_values()
        for part in (*keys, *values):
            assert mx.array_equal(part[0], part[1]).item()


@pytest.mark.parametrize("dtype", [mx.float32, mx.float16])
def test_memory(path, prompts, dtype):
    model = mlx_lm.load(path)[0]
    model.set_dtype(dtype)
    together, _ = prompts
    nbytes = {}
    for bits in (None, 8):
        gen = BatchGenerator(model, max_tokens=N)
        caches = [make_quantized_cache(model, bits, GROUP) if bits else None for _ in together]
        gen.insert(together, caches=caches)  # type: ignore[arg-type]
        assert len(gen.next_generated()) == len(together)  # prefill done, first tokens out
        nbytes[bits] = gen.prompt_cache_nbytes
        extracted, _ = gen.extract_cache([0])[0]
        if bits:
            assert isinstance(extracted[0], QuantizedBatchableKVCache)
            # An extracted cache holds exactly its tokens: bytes per token is the formula's.
            used = sum(c.nbytes for c in extracted)
            assert used == kv_bytes_per_token(model, 8, GROUP) * extracted[0].offset
    ratio = nbytes[8] / nbytes[None]
    expected = kv_bytes_per_token(model, 8, GROUP) / kv_bytes_per_token(model, None, GROUP)
    print(f"\n{dtype}: 8-bit batch cache {nbytes[8]} B / plain {nbytes[None]} B = {ratio:.3f}")
    assert ratio < 0.6
    assert ratio == pytest.approx(expected)  # both allocate the same 256-token steps


def test_kv_bytes_per_token(model):
    # 2 layers × (keys + values) × 2 KV heads × head dim 32, float32: plain 4 B per element;
    # 8-bit: 1 B per element plus a float32 scale and bias per group of 32.
    assert kv_bytes_per_token(model, None, GROUP) == 2 * 2 * 2 * 32 * 4
    assert kv_bytes_per_token(model, 8, GROUP) == 2 * 2 * 2 * (32 + 2 * 4)
    assert kv_bytes_per_token(model, 4, GROUP, dtype=mx.float16) == 2 * 2 * 2 * (16 + 2 * 2)
    cache = make_quantized_cache(model, 4, GROUP)
    model(mx.array([list(range(3, 40))]), cache=cache)
    used = sum(x[..., : c.offset, :].nbytes for c in cache for x in (*c.keys, *c.values))
    assert used == kv_bytes_per_token(model, 4, GROUP) * 37


def test_extract_prompt_cache_and_reinsert(model, prompts):
    """What the text worker does: a finished sequence's cache goes into mlx-lm's LRU prompt
    cache; a later prompt fetches it (trimmed to a prefix), and is inserted with it as history
    next to a sequence decoding meanwhile; it continues as the uninterrupted run does."""
    together, late = prompts
    prompt = together[1]
    gen = BatchGenerator(model, max_tokens=N)
    (whole,) = gen.insert([prompt], caches=[make_quantized_cache(model, 8, GROUP)])
    out: dict[int, list[int]] = {whole: []}
    for _ in drain(gen, out):
        pass
    uninterrupted = out[whole]

    (first,) = gen.insert([prompt], max_tokens=[8], caches=[make_quantized_cache(model, 8, GROUP)])
    finished = None
    while finished is None:
        finished = next((r for r in gen.next_generated() if r.finish_reason), None)
    assert all(isinstance(c, QuantizedBatchableKVCache) for c in finished.prompt_cache)
    assert finished.all_tokens == prompt + uninterrupted[:8]
    lru = LRUPromptCache()
    lru.insert_cache("tiny", finished.all_tokens, finished.prompt_cache)
    assert lru.nbytes == sum(c.nbytes for c in finished.prompt_cache) > 0

    # The same tokens again (as the engine does: trimmed by one, the last token re-fed).
    cache, rest = lru.fetch_nearest_cache("tiny", finished.all_tokens)
    assert rest == [] and can_trim_prompt_cache(cache)
    trim_prompt_cache(cache, 1)
    (other,) = gen.insert([late], caches=[make_quantized_cache(model, 8, GROUP)])
    out = {other: []}
    next(drain(gen, out))  # `other` decodes when the cached one joins
    (again,) = gen.insert(
        [finished.all_tokens[-1:]], max_tokens=[N - 8], caches=[cache], all_tokens=[finished.all_tokens[:-1]]
    )
    out[again] = []
    for _ in drain(gen, {again: out[again]}, N - 8):
        pass
    continued = out[again]
    assert continued[0] == uninterrupted[8]
    assert agreement([continued], [uninterrupted[8:]]) >= 0.95

    # A diverging prompt: the longer cached entry is trimmed to the shared prefix.
    diverging = prompt + uninterrupted[:4] + [(uninterrupted[4] + 1) % model.args.vocab_size]
    cache, rest = lru.fetch_nearest_cache("tiny", diverging)
    assert rest == diverging[-1:] and cache[0].offset == len(diverging) - 1
    extra = gen.extract_cache([other])[other][0]  # a decoding sequence's cache, mid-batch
    assert isinstance(extra[0], QuantizedBatchableKVCache) and extra[0].offset > len(late)
    (uid,) = gen.insert([rest], caches=[cache], all_tokens=[diverging[:-1]])
    got: dict[int, list[int]] = {uid: []}
    for _ in drain(gen, got):
        pass
    expected = reference(model, diverging, 8, quantized_prefill=True)
    assert got[uid][0] == expected[0] and agreement([got[uid]], [expected]) >= 0.95


def test_saved_and_loaded_cache_is_batchable(model, prompts, tmp_path: Path):
    """mlx-lm's load_prompt_cache knows its classes by name: a cache saved as plain
    QuantizedKVCache layers loads as such, and `batchable` makes it insertable again."""
    together, late = prompts
    cache = make_quantized_cache(model, 8, GROUP)
    model(mx.array([together[2][:-1]]), cache=cache)
    save_prompt_cache(str(tmp_path / "c.safetensors"), [QuantizedKVCache.from_state(c.state) for c in cache])
    loaded = batchable(load_prompt_cache(str(tmp_path / "c.safetensors")))
    assert all(type(c) is QuantizedBatchableKVCache and c.offset == len(together[2]) - 1 for c in loaded)
    gen = BatchGenerator(model, max_tokens=N)
    uids = gen.insert([together[2][-1:], late], caches=[loaded, make_quantized_cache(model, 8, GROUP)])
    out: dict[int, list[int]] = {uid: [] for uid in uids}
    for _ in drain(gen, out):
        pass
    expected = [reference(model, p, 8, quantized_prefill=True) for p in (together[2], late)]
    assert agreement(list(out.values()), expected) >= 0.95


class _Model:
    """Stands in for a model whose layers need caches other than KVCache."""

    def __init__(self, caches):
        self.caches = caches
        self.layers = caches

    def make_cache(self):
        return self.caches


def test_refuses_what_it_cannot_quantize(model):
    with pytest.raises(ValueError, match="RotatingKVCache"):
        make_quantized_cache(_Model([KVCache(), RotatingKVCache(max_size=16)]), 8, GROUP)
    with pytest.raises(ValueError, match="ArraysCache"):
        make_quantized_cache(_Model([ArraysCache(size=2), KVCache()]), 8, GROUP)
    with pytest.raises(ValueError, match="does not divide the head dim 32"):
        make_quantized_cache(model, 8, 64)
    with pytest.raises(ValueError, match="bits"):
        make_quantized_cache(model, 3, GROUP)
    check_kv_quantization(model, 8, GROUP)  # the tiny llama goes through mlx-lm's quantized SDPA
    args = gemma2.ModelArgs(
        model_type="gemma2", hidden_size=64, num_hidden_layers=1, intermediate_size=64, num_attention_heads=2,
        head_dim=32, rms_norm_eps=1e-5, vocab_size=32, num_key_value_heads=1,
    )  # fmt: skip
    with pytest.raises(ValueError, match="gemma2 models compute attention themselves"):
        check_kv_quantization(gemma2.Model(args), 8, GROUP)  # its own softcapped attention
    # Differently quantized sequences never share a batch.
    a, b = make_quantized_cache(model, 8, GROUP), make_quantized_cache(model, 4, GROUP)
    model(mx.array([[5, 6, 7]]), cache=a)
    model(mx.array([[5, 6, 7]]), cache=b)
    with pytest.raises(ValueError, match="quantized differently"):
        BatchQuantizedKVCache.merge([a[0], b[0]])

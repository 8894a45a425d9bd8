"""The prompt cache on disk (worker_text/disk_cache.py) on the tiny random model: what is saved
is found again by a new instance (as after a restart) and continues exactly as a full prefill;
another key never hits; LRU eviction; corrupt and half-written files; saves never block."""

from __future__ import annotations

import logging
import os
import random
import subprocess
import sys
import threading
import time

import mlx.core as mx
import pytest
from mlx_lm import load
from mlx_lm.models.cache import make_prompt_cache

from worker_text.disk_cache import DiskPromptCache, cache_for_prefix
from worker_text.prompt_caches import model_key
from worker_text.tiny import build

KEY = "tiny-text|kv=16"
MB = 1 << 20


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return build(tmp_path_factory.mktemp("disk-cache") / "tiny-text")


@pytest.fixture(scope="module")
def model(model_dir):
    return load(str(model_dir))[0]


@pytest.fixture(scope="module")
def tokens(model):
    rng = random.Random(0)  # ids past the vocabulary would read past the embedding table
    return [rng.randrange(3, model.args.vocab_size) for _ in range(700)]


def prefill(model, tokens, cache=None):
    """The cache after `tokens`, and the logits of the last one."""
    cache = make_prompt_cache(model) if cache is None else cache
    logits = model(mx.array([tokens]), cache=cache)[0, -1]
    mx.eval(logits, [c.state for c in cache])
    return cache, logits


def files(cache: DiskPromptCache) -> list[str]:
    return sorted(p.name for p in cache.dir.glob("*.safetensors"))


def test_save_then_lookup_after_restart(tmp_path, model, tokens):
    disk = DiskPromptCache(tmp_path, 100 * MB, KEY)
    for n in (300, 500):
        cache, _ = prefill(model, tokens[:n])
        assert cache[0].keys.shape[2] > n  # KVCache preallocates in 256-token steps
        assert disk.save(tokens[:n], cache)
    disk.close()
    assert len(files(disk)) == 2
    per_token = 2 * 2 * 2 * 16 * 4  # layers × (keys, values) × kv heads × head dim × float32
    for path in disk.dir.glob("*.safetensors"):  # the tokens only, not the preallocated buffer
        assert path.stat().st_size < (int(path.name.split("-")[0]) + 1) * per_token + 4096

    disk = DiskPromptCache(tmp_path, 100 * MB, KEY)  # a restart
    assert len(disk) == 2
    loaded, n = disk.lookup(tokens[:650])
    assert n == 500 and loaded[0].offset == 500 and loaded[0].keys.shape[2] == 500
    _, logits = prefill(model, tokens[500:650], loaded)
    _, full = prefill(model, tokens[:650])
    assert mx.allclose(logits, full, atol=1e-4, rtol=1e-4)
    assert mx.argmax(logits).item() == mx.argmax(full).item()

    assert disk.lookup(tokens[:500])[1] == 500  # a prefix may be the whole of `tokens`
    assert disk.lookup(tokens[:450])[1] == 300
    assert disk.lookup(tokens[:299]) == (None, 0)
    assert disk.lookup([9999] + tokens[1:600]) == (None, 0)
    assert disk.stats["hits"] == 3 and disk.stats["misses"] == 2

    # A longer saved prefix serves a shorter prompt once trimmed.
    loaded, n = disk.lookup(tokens[:600])
    loaded = cache_for_prefix(loaded, 420)
    assert loaded is not None and loaded[0].offset == 420
    _, logits = prefill(model, tokens[420:600], loaded)
    _, full = prefill(model, tokens[:600])
    assert mx.allclose(logits, full, atol=1e-4, rtol=1e-4)
    assert cache_for_prefix(prefill(model, tokens[:10])[0], 20) is None
    disk.close()


def test_another_key_never_hits(tmp_path, model, tokens, model_dir):
    cache, _ = prefill(model, tokens[:300])
    disk = DiskPromptCache(tmp_path, 100 * MB, KEY)
    assert disk.save(tokens[:300], cache)
    disk.close()
    other = DiskPromptCache(tmp_path, 100 * MB, KEY + "|kv=8")
    assert other.lookup(tokens) == (None, 0)
    assert other.dir != disk.dir and other.nbytes == disk.nbytes  # other keys count towards the bound
    other.close()
    again = DiskPromptCache(tmp_path, 100 * MB, KEY)
    assert again.lookup(tokens)[1] == 300
    again.close()

    key = model_key(model_dir, "tiny-text", kv_bits=None)
    assert key == model_key(model_dir, "tiny-text", kv_bits=None)
    assert key != model_key(model_dir, "tiny-text", kv_bits=8)


def test_lru_eviction(tmp_path, model, tokens):
    cache, _ = prefill(model, tokens[:300])
    prompts = {name: [i] + tokens[1:300] for i, name in enumerate("abcde")}  # one cache, five prefixes
    probe = DiskPromptCache(tmp_path / "probe", 100 * MB, KEY)
    probe.save(prompts["a"], cache)
    probe.close()
    size = probe.nbytes
    disk = DiskPromptCache(tmp_path / "lru", int(2.5 * size), KEY)
    for name in "ab":
        assert disk.save(prompts[name], cache)
        assert disk.flush()
    assert disk.lookup(prompts["a"] + [1, 2])[1] == 300  # a is now more recent than b
    assert disk.save(prompts["c"], cache) and disk.flush()
    assert disk.lookup(prompts["b"]) == (None, 0)
    assert disk.lookup(prompts["a"])[1] == 300 and disk.lookup(prompts["c"])[1] == 300
    assert disk.stats["evicted"] == 1 and len(files(disk)) == 2
    disk.close()

    disk = DiskPromptCache(tmp_path / "lru", int(2.5 * size), KEY)  # recency survives a restart
    assert disk.save(prompts["d"], cache) and disk.flush()  # c was used last: a goes
    assert disk.lookup(prompts["a"]) == (None, 0) and disk.lookup(prompts["c"])[1] == 300
    assert sum(p.stat().st_size for p in (tmp_path / "lru").rglob("*.safetensors")) <= 2.5 * size
    disk.close()

    smaller = DiskPromptCache(tmp_path / "lru", int(1.5 * size), KEY)  # a lower bound, at start
    assert len(smaller) == 1 and smaller.lookup(prompts["c"])[1] == 300  # c was used after d was saved
    tiny = DiskPromptCache(tmp_path / "lru", size // 2, KEY)  # too big to keep at all
    assert len(tiny) == 0 and tiny.save(prompts["e"], cache) and tiny.flush() and len(tiny) == 0
    smaller.close()
    tiny.close()


def test_corrupt_file_is_a_miss_and_removed(tmp_path, model, tokens, caplog):
    disk = DiskPromptCache(tmp_path, 100 * MB, KEY)
    for n in (300, 500):
        assert disk.save(tokens[:n], prefill(model, tokens[:n])[0])
    disk.close()
    longer = next(disk.dir.glob("500-*.safetensors"))
    longer.write_bytes(longer.read_bytes()[:1000])  # truncated
    disk = DiskPromptCache(tmp_path, 100 * MB, KEY)
    with caplog.at_level(logging.WARNING, logger="worker_text.disk_cache"):
        assert disk.lookup(tokens)[1] == 300  # falls back to the shorter prefix
    assert "unreadable" in caplog.text and not longer.exists() and disk.stats["corrupt"] == 1

    shorter = next(disk.dir.glob("300-*.safetensors"))
    shorter.write_bytes(b"\0" * 100)
    assert disk.lookup(tokens) == (None, 0) and not shorter.exists() and len(disk) == 0
    disk.close()


def test_half_written_files_are_never_entries(tmp_path, model, tokens):
    disk = DiskPromptCache(tmp_path, 100 * MB, KEY)
    assert disk.save(tokens[:300], prefill(model, tokens[:300])[0]) and disk.flush()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    half = disk.dir / f"tmp.{int(dead.stdout)}.0123.safetensors"
    half.write_bytes(next(disk.dir.glob("300-*")).read_bytes()[:500])
    live = disk.dir / f"tmp.{os.getpid()}.4567.safetensors"  # another instance writing now
    live.write_bytes(b"x")
    disk.close()
    disk = DiskPromptCache(tmp_path, 100 * MB, KEY)
    assert not half.exists() and live.exists() and len(disk) == 1
    disk.close()


def test_saves_never_block(tmp_path, model, tokens):
    cache, _ = prefill(model, tokens[:300])
    disk = DiskPromptCache(tmp_path, 100 * MB, KEY, max_pending=2)
    release = threading.Event()
    write = disk._write
    disk._write = lambda *args: (release.wait(10), write(*args))  # type: ignore[method-assign]
    start = time.perf_counter()
    saved = [disk.save([i] + tokens[1:300], cache) for i in range(6)]
    assert time.perf_counter() - start < 1.0
    assert saved == [True, True, False, False, False, False] and disk.stats["dropped"] == 4
    assert not disk.save([0] + tokens[1:300], cache)  # already queued
    release.set()
    assert disk.flush(10) and len(disk) == 2
    assert not disk.save([1] + tokens[1:300], cache)  # already saved
    disk.close()


def test_what_is_not_saved(tmp_path, model, tokens):
    disk = DiskPromptCache(tmp_path, 100 * MB, KEY)
    cache, _ = prefill(model, tokens[:100])
    assert not disk.save(tokens[:100], cache)  # shorter than min_tokens
    assert not disk.save(tokens[:300], cache)  # the cache does not hold these tokens
    disk.close()
    assert not disk.save(tokens[:300], prefill(model, tokens[:300])[0])  # closed
    assert files(disk) == []

    off = DiskPromptCache(tmp_path / "off", 0, KEY)
    assert not off.save(tokens[:300], prefill(model, tokens[:300])[0]) and off.lookup(tokens) == (None, 0)
    assert not (tmp_path / "off").exists()
    off.close()


def test_supersede_and_quantized(tmp_path, model, tokens):
    disk = DiskPromptCache(tmp_path, 100 * MB, KEY, supersede=True)
    assert disk.save(tokens[:300], prefill(model, tokens[:300])[0]) and disk.flush()
    assert disk.save(tokens[:500], prefill(model, tokens[:500])[0]) and disk.flush()
    assert [f.split("-")[0] for f in files(disk)] == ["500"]
    disk.close()

    wide = load(str(build(tmp_path / "wide", hidden_size=256, num_attention_heads=4, num_key_value_heads=2)))[0]
    cache, _ = prefill(wide, tokens[:300])
    quantized = [c.to_quantized(group_size=64, bits=8) for c in cache]
    disk = DiskPromptCache(tmp_path / "q", 100 * MB, KEY + "|kv=8")
    assert disk.save(tokens[:300], quantized) and disk.flush()
    loaded, n = disk.lookup(tokens)
    assert n == 300 and type(loaded[0]).__name__ == "QuantizedKVCache" and loaded[0].keys[0].shape[2] == 300
    for mine, theirs in zip(loaded, quantized, strict=True):
        for a, b in zip(mine.keys + mine.values, theirs.keys + theirs.values, strict=True):
            assert mx.array_equal(a, b[..., :300, :])
    disk.close()


def test_save_a_prefix_of_a_longer_cache(tmp_path, model, tokens):
    cache, _ = prefill(model, tokens[:500])
    disk = DiskPromptCache(tmp_path, 100 * MB, KEY)
    assert not disk.has(tokens[:300])
    assert disk.save(tokens[:300], cache, upto=300) and disk.has(tokens[:300])  # pending counts
    assert disk.flush() and disk.has(tokens[:300]) and not disk.has(tokens[:301])
    assert cache[0].offset == 500  # the caller's cache is left as it is
    disk.close()
    disk = DiskPromptCache(tmp_path, 100 * MB, KEY)
    loaded, n = disk.lookup(tokens[:600])
    assert n == 300 and loaded[0].keys.shape[2] == 300
    _, logits = prefill(model, tokens[300:600], loaded)
    assert mx.allclose(logits, prefill(model, tokens[:600])[1], atol=1e-4, rtol=1e-4)
    disk.close()

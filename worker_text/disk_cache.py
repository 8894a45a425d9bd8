"""A prompt cache on disk that survives restarts: the KV caches of long prompt prefixes, saved by
a background thread and found again after a worker restart or a model unload/load.

Layout: `directory/<hash of key>/<tokens>-<sha256 of the prefix's tokens>.safetensors`, written
by mlx-lm's `save_prompt_cache` (metadata: token count, prefix hash, key) to a temporary name,
fsynced, then renamed: a crash never leaves a half file that looks complete. The key names the
model and the cache settings (`prompt_caches.model_key`): entries of another key are never returned.

`save` runs on the engine thread and only evaluates the cache and queues it; one writer thread
writes it. `lookup` hashes the prompt at the prefix lengths saved (one incremental sha256 pass)
and loads the longest saved prefix. The files of the whole directory, every key's, share one
LRU (file mtimes, touched on load) bounded by `max_bytes`.
"""

from __future__ import annotations

import hashlib
import logging
import os
import queue
import re
import sys
import threading
import time
import uuid
from array import array
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlx.core as mx
from mlx.utils import tree_flatten
from mlx_lm.models.cache import (
    CacheList,
    KVCache,
    QuantizedKVCache,
    can_trim_prompt_cache,
    load_prompt_cache,
    save_prompt_cache,
    trim_prompt_cache,
)

log = logging.getLogger(__name__)

MIN_TOKENS = 256
"""Shorter prefixes are not saved: they prefill faster than they load."""
MAX_PENDING = 2
"""Saves queued or being written at most; more are dropped (each holds a whole KV cache)."""
ENTRY = re.compile(r"^(\d+)-([0-9a-f]{64})\.safetensors$")
TMP_PREFIX = "tmp."
STALE_TMP_S = 3600.0
"""A temporary file this old is removed at start even when its writer's pid runs."""


def token_bytes(tokens: Sequence[int]) -> bytes:
    """Tokens as little-endian int64s: what prefix hashes are computed over."""
    data = array("q", tokens)
    if sys.byteorder == "big":
        data.byteswap()
    return data.tobytes()


def prefix_digests(tokens: Sequence[int] | bytes, lengths: Iterable[int]) -> dict[int, str]:
    """The sha256 of `tokens[:n]` for each `n` of `lengths` that fits, in one pass."""
    data = memoryview(tokens if isinstance(tokens, bytes) else token_bytes(tokens))
    digest, done, out = hashlib.sha256(), 0, {}
    for n in sorted(set(lengths)):
        if n * 8 > len(data):
            break
        digest.update(data[done * 8 : n * 8])
        done, out[n] = n, digest.hexdigest()
    return out


def cache_tokens(cache: Sequence[Any]) -> int | None:
    """How many tokens a prompt cache holds (its first layer's offset), or None if unknown."""
    for c in cache:
        held = cache_tokens(list(c.caches)) if isinstance(c, CacheList) else getattr(c, "offset", None)
        if isinstance(held, int):
            return held
    return None


def cache_for_prefix(cache: list[Any], n: int) -> list[Any] | None:
    """`cache` (of at least `n` tokens) cut to its first `n` tokens, in place, or None where its
    layers cannot be trimmed (rotating past its window, recurrent state) or it is shorter."""
    held = cache_tokens(cache)
    if held is None or held < n or (held > n and not can_trim_prompt_cache(cache)):
        return None
    trim_prompt_cache(cache, held - n)
    return cache


def _compact(c: Any, n: int | None = None) -> Any:
    """A layer cache that keeps only its first `n` tokens (default: its `offset`), as mlx-lm's own
    class (a batchable subclass would not load: mlx-lm finds classes by name). mlx-lm 0.32's
    KVCache.state is its whole preallocated buffer (256-token steps) and stays so after a trim:
    saved as is, a file would hold up to 255 stale positions (or, after a trim, the trimmed
    tokens). Always a copy: the caller's cache is left as it is."""
    if isinstance(c, CacheList):
        return CacheList(*(_compact(x, n) for x in c.caches))
    quantized = isinstance(c, QuantizedKVCache)
    if not (quantized or isinstance(c, KVCache)) or c.keys is None:
        return c
    kind: Any = QuantizedKVCache if quantized else KVCache
    n = c.offset if n is None else min(n, c.offset)
    out = kind.__new__(kind)
    keys, values = (
        [mx.contiguous(x[..., :n, :]) for x in part] if quantized else mx.contiguous(part[..., :n, :])
        for part in (c.keys, c.values)
    )
    out.state = (keys, values, n, c.group_size, c.bits) if quantized else (keys, values, n)
    return out


@dataclass
class _Entry:
    path: Path
    size: int
    tokens: int = 0
    digest: str = ""
    own: bool = False
    """Of this key (looked up); other keys' files only count towards the byte bound."""


class DiskPromptCache:
    """Prompt caches on disk for one key (model + cache settings); see the module docstring.

    `save` and `lookup` belong to the engine thread; `max_bytes <= 0` turns it off."""

    def __init__(
        self,
        directory: Path,
        max_bytes: int,
        key: str,
        *,
        min_tokens: int = MIN_TOKENS,
        max_pending: int = MAX_PENDING,
        supersede: bool = False,
    ):
        self.root = Path(directory)
        self.key = key
        self.dir = self.root / hashlib.sha256(key.encode()).hexdigest()[:16]
        self.max_bytes = max_bytes
        self.min_tokens = min_tokens
        self.max_pending = max_pending
        self.supersede = supersede
        """Delete an entry once a longer one that starts with it is saved (agentic turns): less
        disk, but a retry of the older prompt itself then misses."""
        self.enabled = max_bytes > 0
        self.stats = dict.fromkeys(("hits", "misses", "saved", "dropped", "evicted", "corrupt"), 0)
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._lru: OrderedDict[Path, _Entry] = OrderedDict()
        self._index: dict[int, dict[str, _Entry]] = {}
        self._bytes = 0
        self._pending: set[str] = set()
        self._busy: set[Path] = set()
        self._queue: queue.Queue[tuple[str, int, bytes, list[Any]] | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._last_ns = 0
        if not self.enabled:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        if not (key_file := self.dir / "key.txt").exists():
            key_file.write_text(key)  # for people: which model and settings this directory holds
        self._scan()
        with self._lock:
            self._evict()
        self._thread = threading.Thread(target=self._run, name="disk-prompt-cache", daemon=True)
        self._thread.start()

    @property
    def nbytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return sum(len(d) for d in self._index.values())

    def has(self, tokens: Sequence[int]) -> bool:
        """Whether exactly these tokens are saved (or being saved)."""
        if not self.enabled:
            return False
        digest = hashlib.sha256(token_bytes(tokens)).hexdigest()
        with self._lock:
            return digest in self._index.get(len(tokens), {}) or digest in self._pending

    def save(self, tokens: Sequence[int], cache: list[Any], upto: int | None = None) -> bool:
        """Queue `cache` — the KV cache of exactly `tokens`, or with `upto`, of at least `upto`
        tokens of which `tokens` are the first (a prefix of it is saved) — for writing; True if
        queued. Never blocks on the disk: evaluates a compact copy of the cache and drops the
        save when `max_pending` saves wait already."""
        n = len(tokens)
        if self._thread is None or n < self.min_tokens:
            return False
        held = cache_tokens(cache)
        if held is not None and (held < n if upto is not None else held != n):
            log.warning("prompt cache: not saved, the cache holds %d tokens, not %d", held, n)
            return False
        data = token_bytes(tokens)
        digest = hashlib.sha256(data).hexdigest()
        with self._lock:
            if digest in self._index.get(n, {}) or digest in self._pending:
                return False
            if len(self._pending) >= self.max_pending:
                self.stats["dropped"] += 1
                return False
            self._pending.add(digest)
        try:
            compact = [_compact(c, n) for c in cache]
            mx.eval([c.state for c in compact])  # here, on the caller's stream: the writer only copies bytes
        except Exception:
            with self._lock:
                self._pending.discard(digest)
            raise
        self._queue.put((digest, n, data, compact))
        return True

    def lookup(self, tokens: Sequence[int]) -> tuple[list[Any] | None, int]:
        """The loaded (evaluated) cache of the longest saved prefix of `tokens` and its token
        count, or (None, 0). Pass the prompt less its last token when at least one token must
        still go through the model (the first logits)."""
        if not self.enabled:
            return None, 0
        with self._lock:
            lengths = [n for n in self._index if n <= len(tokens)]
        digests = prefix_digests(tokens, lengths) if lengths else {}
        for n in sorted(lengths, reverse=True):
            with self._lock:
                entry = self._index.get(n, {}).get(digests[n])
                if entry is None:
                    continue
                self._lru.move_to_end(entry.path)
                self._busy.add(entry.path)  # the writer does not evict it while it loads
            try:
                cache = self._load(entry)
            except Exception as e:
                log.warning("prompt cache: removing unreadable %s: %s", entry.path.name, e)
                with self._lock:
                    self._busy.discard(entry.path)
                    self._remove(entry)
                    self.stats["corrupt"] += 1
                continue
            with self._lock:
                self._busy.discard(entry.path)
                self.stats["hits"] += 1
            self._touch(entry.path)
            return cache, n
        with self._lock:
            self.stats["misses"] += 1
        return None, 0

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until every queued save is written (True), or `timeout` seconds."""
        with self._idle:
            return self._idle.wait_for(lambda: not self._pending, timeout)

    def close(self, timeout: float = 30.0) -> None:
        """Write what is queued (waiting `timeout` seconds at most) and stop the writer."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._queue.put(None)
        thread.join(timeout)
        if thread.is_alive():
            log.warning("prompt cache: %d saves still pending after %.0f s; not waiting", len(self._pending), timeout)

    def _touch(self, path: Path) -> None:
        """Recency that survives a restart: the mtime, set from a clock finer than the kernel's
        own file timestamps (which tie for files touched within a few milliseconds)."""
        with self._lock:
            self._last_ns = now = max(time.time_ns(), self._last_ns + 1000)
        try:
            os.utime(path, ns=(now, now))
        except OSError:
            pass

    # The writer thread

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            digest, n, data, cache = item
            try:
                self._write(digest, n, data, cache)
            except Exception as e:
                log.warning("prompt cache: could not save a %d-token prefix: %s", n, e)
            finally:
                del item, cache
                with self._idle:
                    self._pending.discard(digest)
                    self._idle.notify_all()

    def _write(self, digest: str, n: int, data: bytes, cache: list[Any]) -> None:
        flat: Any = tree_flatten([c.state for c in cache])
        if sum(x.nbytes for _, x in flat if isinstance(x, mx.array)) > self.max_bytes:
            return  # would evict everything else and still not fit
        final = self.dir / f"{n}-{digest}.safetensors"
        tmp = self.dir / f"{TMP_PREFIX}{os.getpid()}.{uuid.uuid4().hex}.safetensors"
        try:
            save_prompt_cache(str(tmp), cache, {"tokens": str(n), "digest": digest, "key": self.key})
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())  # the data is on disk before the name says it is complete
            os.replace(tmp, final)
            self._touch(final)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        entry = _Entry(final, final.stat().st_size, n, digest, own=True)
        with self._lock:
            self._add(entry)
            self.stats["saved"] += 1
            shorter = [m for m in self._index if m < n] if self.supersede and can_trim_prompt_cache(cache) else []
        if shorter:
            older = prefix_digests(data, shorter)
            with self._lock:
                for m, d in older.items():
                    if (old := self._index.get(m, {}).get(d)) is not None and old.path not in self._busy:
                        self._remove(old)
        with self._lock:
            self._evict()  # the new file is the most recent: it goes only if it alone is too big

    # Index (callers hold the lock, except in __init__)

    def _add(self, entry: _Entry) -> None:
        if (old := self._lru.pop(entry.path, None)) is not None:
            self._bytes -= old.size
        self._lru[entry.path] = entry
        self._bytes += entry.size
        if entry.own:
            self._index.setdefault(entry.tokens, {})[entry.digest] = entry

    def _remove(self, entry: _Entry) -> None:
        if self._lru.pop(entry.path, None) is None:
            return
        self._bytes -= entry.size
        if entry.own:
            same = self._index.get(entry.tokens, {})
            same.pop(entry.digest, None)
            if not same:
                self._index.pop(entry.tokens, None)
        try:
            entry.path.unlink(missing_ok=True)
        except OSError as e:
            log.warning("prompt cache: cannot remove %s: %s", entry.path, e)

    def _evict(self) -> None:
        """Remove least recently used files until the directory fits in `max_bytes`."""
        while self._bytes > self.max_bytes:
            victim = next((e for p, e in self._lru.items() if p not in self._busy), None)
            if victim is None:
                return
            self._remove(victim)
            self.stats["evicted"] += 1

    def _scan(self) -> None:
        """Rebuild the index and the LRU (by mtime) from the files of every key; remove the
        temporary files of writers that died."""
        found: list[tuple[int, _Entry]] = []
        for sub in (p for p in self.root.iterdir() if p.is_dir()):
            for path in sub.iterdir():
                try:
                    stat = path.stat()
                    if path.name.startswith(TMP_PREFIX):
                        if _stale(path.name, stat.st_mtime):
                            path.unlink(missing_ok=True)
                    elif match := ENTRY.match(path.name):
                        own = sub == self.dir
                        entry = _Entry(path, stat.st_size, int(match[1]), match[2], own)
                        found.append((stat.st_mtime_ns, entry))
                except OSError:
                    continue  # removed meanwhile (another worker shares the directory)
        for _, entry in sorted(found, key=lambda f: f[0]):
            self._add(entry)

    def _load(self, entry: _Entry) -> list[Any]:
        cache, meta = load_prompt_cache(str(entry.path), return_metadata=True)
        expect = {"tokens": str(entry.tokens), "digest": entry.digest, "key": self.key}
        if any(meta.get(k) != v for k, v in expect.items()):
            raise ValueError("its metadata does not match its name")
        held = cache_tokens(cache)
        if held is not None and held != entry.tokens:
            raise ValueError(f"it holds {held} tokens, not {entry.tokens}")
        mx.eval([c.state for c in cache])  # read it now: the file may go once this returns
        return cache


def _stale(name: str, mtime: float) -> bool:
    """A temporary file whose writer is gone (its pid is in its name) or that is very old."""
    try:
        os.kill(int(name.split(".")[1]), 0)
    except (ValueError, IndexError, ProcessLookupError):
        return True
    except PermissionError:
        pass  # another user's live process
    return time.time() - mtime > STALE_TMP_S

"""The text engine's prompt caches: KV prefixes kept in RAM (mlx-lm's LRUPromptCache, bounded by
PROMPT_CACHE_BYTES) and on disk (worker_text/disk_cache.py, PROMPT_CACHE_DIR bounded by
PROMPT_CACHE_DISK_GB), so a prompt prefills only what no earlier prompt covered — after a
restart or a model reload too.

A lookup tries RAM first, then disk; a disk hit is also kept in RAM for the next turn. Saving to
disk happens when a prompt's prefill ends (its cache is then exactly the prompt's), and off the
engine's path (a writer thread). Besides the whole prompt, the prefix that ends before its last
message is saved too: a long shared system prompt (agents, tools, files) is then found by the
next conversation that starts with it, whatever its user message.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mlx_lm.models.cache import LRUPromptCache, can_trim_prompt_cache, trim_prompt_cache

from .disk_cache import DiskPromptCache, cache_tokens
from .kv_quant import batchable

log = logging.getLogger("mis.prompt_cache")

RAM_ENTRIES = 64
"""Most sequences the RAM cache keeps (its byte bound usually binds first)."""


class PromptCaches:
    """Only the engine thread may call it."""

    def __init__(self, model_id: str, ram_bytes: int, disk: DiskPromptCache | None = None, quantized: bool = False):
        self.model_id = model_id
        self.ram = LRUPromptCache(max_size=RAM_ENTRIES, max_bytes=ram_bytes)
        self.disk = disk if disk is not None and disk.enabled else None
        self.quantized = quantized
        """Caches are the batchable quantized kind (worker_text/kv_quant.py): loaded ones are made so."""

    def fetch(self, prompt: list[int]) -> tuple[list | None, list[int]]:
        """The cache of the longest known prefix, and the tokens still to prefill (never none:
        the last prompt token must go through the model to give the first logits)."""
        cache, rest = self.ram.fetch_nearest_cache(self.model_id, prompt)
        if self.disk is not None and len(rest) > self.disk.min_tokens:
            found, n = self.disk.lookup(prompt)  # a miss in RAM, or a short hit: disk may know more
            if found is not None and len(prompt) - n < len(rest):
                cache = batchable(found) if self.quantized else found
                rest = prompt[n:]
                self.ram.insert_cache(self.model_id, prompt[:n], cache)
                cache, rest = self.ram.fetch_nearest_cache(self.model_id, prompt)  # a copy: RAM keeps its own
        if cache is None:
            return None, prompt
        if not rest:
            if not can_trim_prompt_cache(cache):
                return None, prompt
            trim_prompt_cache(cache, 1)
            rest = prompt[-1:]
        return cache, rest

    def keep(self, tokens: list[int], cache: list) -> None:
        """A finished sequence's cache (prompt and answer), for the next turn (RAM only)."""
        self.ram.insert_cache(self.model_id, tokens, cache)

    def wants(self, prompt: list[int]) -> bool:
        """Whether a prompt whose prefill just ended should be saved to disk (checked before
        its cache is extracted from the batch, which costs a copy)."""
        return self.disk is not None and len(prompt) > self.disk.min_tokens and not self.disk.has(prompt[:-1])

    def prefilled(self, prompt: list[int], cache: list, shared_prefix: Callable[[], int]) -> None:
        """Save a prompt's cache to disk, and the prefix before its last message
        (`shared_prefix()` tokens) when that is long enough to be worth it."""
        if self.disk is None:
            return
        try:
            # The batch holds all but the prompt's last token (it goes in with the first decode).
            tokens = prompt[: cache_tokens(cache) or 0]
            cut = min(shared_prefix(), len(tokens))
            if self.disk.min_tokens <= cut < len(tokens) and not self.disk.has(tokens[:cut]):
                self.disk.save(tokens[:cut], cache, upto=cut)
            self.disk.save(tokens, cache)
        except Exception:  # the disk cache is an optimisation: it must never fail a job
            log.warning("prompt cache: could not save a prefix to disk", exc_info=True)

    def status(self) -> dict:
        disk = self.disk
        return {"prompt_cache_disk_bytes": disk.nbytes, **disk.stats} if disk is not None else {}

    def close(self) -> None:
        if self.disk is not None:
            self.disk.close()


def common_prefix(a: list[int], b: list[int]) -> int:
    """How many leading tokens two token lists share."""
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


def model_key(model_dir: Path, model_id: str, **settings: Any) -> str:
    """A key for `DiskPromptCache`: the model id, its config, its weights' identity (each
    safetensors file's name, size and the hash of its first MiB: header and first tensors),
    mlx-lm's version and the cache settings (e.g. kv_bits, kv_group_size)."""
    import mlx_lm

    config = model_dir / "config.json"
    weights = []
    for path in sorted(model_dir.glob("*.safetensors")):
        with open(path, "rb") as f:
            weights.append([path.name, path.stat().st_size, hashlib.sha256(f.read(1 << 20)).hexdigest()])
    parts = {
        "model": model_id,
        "config": hashlib.sha256(config.read_bytes()).hexdigest() if config.exists() else None,
        "weights": weights,
        "mlx_lm": mlx_lm.__version__,
        "settings": settings,
    }
    return json.dumps(parts, sort_keys=True, default=str)

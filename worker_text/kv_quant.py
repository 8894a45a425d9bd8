"""A quantized KV cache that mlx-lm 0.32.2's continuously batched `BatchGenerator` can use.

Why: the KV cache, not the weights, bounds how many sequences (and how long) a text worker
can hold at once. 8-bit keys and values take about half the memory of float16 ones (4-bit
about a quarter) at a small cost in accuracy. mlx-lm has a `QuantizedKVCache`, but only for
single-sequence generation: it has no `merge`, so `BatchGenerator` refuses it ("does not yet
support batching with history"), and `BatchKVCache` only stores plain arrays.

How: `BatchQuantizedKVCache` is `BatchKVCache` (same left-padding, offset and `_idx`
bookkeeping, inherited `prepare`, `trim`, `make_mask`, `size`, `empty`, `state`) whose keys
and values are stored as quantized `(wq, scales, biases)` triples, as `QuantizedKVCache`
stores them; every method that touches the storage (`update_and_fetch`, `finalize`,
`filter`, `extend`, `extract`, `merge`, `nbytes`) is redone for triples. `update_and_fetch`
returns triples and the cache has `bits` and `group_size`, so mlx-lm's
`scaled_dot_product_attention` takes its quantized path. That path accepts an array mask,
and `BatchKVCache.make_mask` always returns one (left padding included), so no "causal"
string ever reaches it from a batch (it would handle one anyway, as plain causal).

A sequence's own cache is `QuantizedBatchableKVCache` (a `QuantizedKVCache` with `merge`
and `size`): `BatchGenerator.insert(..., caches=[make_quantized_cache(...)])` batches it,
and `extract` (a finished sequence's `prompt_cache`, `BatchGenerator.extract_cache`) gives
one back, trimmable and deep-copyable for mlx-lm's `LRUPromptCache`.
"""

from __future__ import annotations

from typing import Any

import mlx.core as mx
from mlx.utils import tree_flatten, tree_map, tree_reduce
from mlx_lm.models.cache import BatchKVCache, KVCache, QuantizedKVCache, dynamic_roll, make_prompt_cache

BITS = (2, 4, 8)
"""Widths whose codes pack evenly into uint32 words, the layout `QuantizedKVCache` assumes
(mlx's 3/5/6-bit packing is different, so its `el_per_int` arithmetic would be wrong)."""
GROUP_SIZES = (32, 64, 128)
"""Group sizes `mx.quantize` supports; each must divide the head dim."""

Triple = tuple[Any, Any, Any]
"""(wq, scales, biases) of one quantized tensor, as `mx.quantize` returns them."""


def _quantize(x: Any, group_size: int, bits: int) -> Triple:
    wq, scales, biases = mx.quantize(x, group_size=group_size, bits=bits)
    return wq, scales, biases


def _zeros(batch: int, heads: int, length: int, dim: int, dtype: Any, group_size: int, bits: int) -> Triple:
    """Room for `length` quantized tokens; zero codes with zero scales and biases read as 0."""
    per_word = 32 // bits
    return (
        mx.zeros((batch, heads, length, dim // per_word), dtype=mx.uint32),
        mx.zeros((batch, heads, length, dim // group_size), dtype=dtype),
        mx.zeros((batch, heads, length, dim // group_size), dtype=dtype),
    )


def _upto(kv: tuple[Triple, Triple], stop: int, start: int = 0) -> tuple[Triple, Triple]:
    # Every part of a triple has the sequence on axis 2, so one slice serves all six arrays.
    keys, values = kv
    return tuple(x[..., start:stop, :] for x in keys), tuple(x[..., start:stop, :] for x in values)


def _sequence_kv(cache: Any, group_size: int, bits: int) -> tuple[Triple, Triple] | None:
    """A per-sequence cache's used keys and values as triples (None when empty); a plain
    `KVCache` (a sequence inserted without a quantized cache) is quantized on the way in."""
    keys, values, n = cache.keys, cache.values, cache.offset  # Any: mlx-lm declares them None
    if keys is None or n == 0:
        return None
    if isinstance(cache, QuantizedKVCache):
        if (cache.group_size, cache.bits) != (group_size, bits):
            raise ValueError(
                f"cannot batch KV caches quantized differently: {cache.bits}-bit/group {cache.group_size} "
                f"with {bits}-bit/group {group_size}"
            )
        return _upto((tuple(keys), tuple(values)), n)
    if isinstance(cache, KVCache):
        return _quantize(keys[..., :n, :], group_size, bits), _quantize(values[..., :n, :], group_size, bits)
    raise ValueError(f"{type(cache).__name__} cannot join a quantized KV batch")


class BatchQuantizedKVCache(BatchKVCache):
    """`BatchKVCache` with 8/4/2-bit quantized storage: same left-padded layout, where row b
    holds `left_padding[b]` unused slots then its tokens, right-aligned at `_idx`."""

    # Triples here (None until the first update), where BatchKVCache declares arrays.
    keys: Any
    values: Any
    offset: Any
    left_padding: Any

    def __init__(self, left_padding: list[int], group_size: int = 64, bits: int = 8):
        if bits not in BITS or group_size not in GROUP_SIZES:
            raise ValueError(f"unsupported KV quantization: bits {bits} (of {BITS}), group {group_size}")
        super().__init__(left_padding)
        self.group_size = group_size
        self.bits = bits  # its presence sends mlx-lm's attention down the quantized path

    def update_and_fetch(self, keys, values):
        prev, n = self._idx, keys.shape[2]
        if self.keys is None or prev + n > self.keys[0].shape[2]:
            # Grow in steps of `step` tokens, as BatchKVCache does, so decoding does not
            # reallocate every token; the unused tail past `prev` is dropped first.
            batch, heads, _, k_dim = keys.shape
            room = (self.step + n - 1) // self.step * self.step
            new_k = _zeros(batch, heads, room, k_dim, keys.dtype, self.group_size, self.bits)
            new_v = _zeros(batch, heads, room, values.shape[3], values.dtype, self.group_size, self.bits)
            if self.keys is None:
                self.keys, self.values = new_k, new_v
            else:
                old_k, old_v = _upto((self.keys, self.values), prev)
                self.keys = tuple(mx.concatenate([a, b], axis=2) for a, b in zip(old_k, new_k, strict=True))
                self.values = tuple(mx.concatenate([a, b], axis=2) for a, b in zip(old_v, new_v, strict=True))
        self.offset = self.offset + n
        self._idx += n
        # Quantized per token (groups run along the head dim), so padding never changes a
        # real token's codes and a batch stores exactly what a lone sequence would.
        fresh = _quantize(keys, self.group_size, self.bits) + _quantize(values, self.group_size, self.bits)
        for buffer, part in zip(self.keys + self.values, fresh, strict=True):
            buffer[..., prev : self._idx, :] = part
        return self.keys_and_values()

    def keys_and_values(self):
        return _upto((self.keys, self.values), self._idx)

    def finalize(self):
        # Right-padded prefill (sequences of unequal length prefilled together) leaves each
        # row's padding after its tokens; rolling every row right by its padding moves it to
        # the left, where `left_padding` masks it, exactly as BatchKVCache does.
        if self._right_padding is not None:
            shift = self._right_padding[:, None]
            self.keys, self.values = tree_map(lambda x: dynamic_roll(x, shift, axis=2), (self.keys, self.values))
            self.offset = self.offset - self._right_padding
            self.left_padding += self._right_padding
            self._right_padding = None

    def filter(self, batch_indices):
        """Keep only these rows (in place), then drop the padding columns all rows share."""
        if self.keys is not None:
            self.keys, self.values = tree_map(lambda x: x[batch_indices], (self.keys, self.values))
        self.offset = self.offset[batch_indices]
        self.left_padding = self.left_padding[batch_indices]
        shared = min(self.left_padding.tolist())
        if shared > 0:
            if self.keys is not None:
                self.keys, self.values = _upto((self.keys, self.values), self.keys[0].shape[2], start=shared)
            self._idx -= shared
            self.left_padding -= shared

    def extend(self, other):
        """Append `other`'s rows (in place): both right-aligned at the longer `_idx`, both
        buffers padded to the larger allocation; the extra slots count as left padding."""
        if not isinstance(other, BatchQuantizedKVCache):
            other = _as_quantized_batch(other, self.group_size, self.bits)
        elif (other.group_size, other.bits) != (self.group_size, self.bits):
            raise ValueError("cannot extend a quantized KV batch with one quantized differently")
        if self.keys is None and other.keys is None:
            self.left_padding = mx.concatenate([self.left_padding, other.left_padding])
            self.offset = mx.concatenate([self.offset, other.offset])
            return
        idx = max(self._idx, other._idx)
        size = max(c.keys[0].shape[2] for c in (self, other) if c.keys is not None)
        ref = self.keys + self.values if self.keys is not None else other.keys + other.values

        def aligned(c: BatchQuantizedKVCache) -> tuple[list, Any]:
            if c.keys is None:
                rows = c.offset.shape[0]
                parts = [mx.zeros((rows, r.shape[1], 0, r.shape[3]), dtype=r.dtype) for r in ref]
            else:
                parts = list(c.keys + c.values)
            left = idx - c._idx
            right = size - parts[0].shape[2] - left
            if right < 0:  # only unused allocation past c._idx is cut (idx <= size)
                parts, right = [x[..., :right, :] for x in parts], 0
            if left or right:
                parts = [mx.pad(x, [(0, 0), (0, 0), (left, right), (0, 0)]) for x in parts]
            return parts, c.left_padding + left

        mine, my_padding = aligned(self)
        theirs, their_padding = aligned(other)
        joined = tuple(mx.concatenate([a, b]) for a, b in zip(mine, theirs, strict=True))
        self.keys, self.values = joined[:3], joined[3:]
        self.offset = mx.concatenate([self.offset, other.offset])
        self.left_padding = mx.concatenate([my_padding, their_padding])
        self._idx = idx

    def extract(self, idx):
        """Row `idx` as a lone sequence's cache, holding just its tokens (no padding)."""
        cache = QuantizedBatchableKVCache(group_size=self.group_size, bits=self.bits)
        if self.keys is None:
            return cache
        padding = self.left_padding.tolist()[idx]
        row = tree_map(lambda x: mx.contiguous(x[idx : idx + 1]), _upto((self.keys, self.values), self._idx, padding))
        cache.keys, cache.values = row
        cache.offset = self._idx - padding
        return cache

    @classmethod
    def merge(cls, caches):
        """One batch from per-sequence caches (what `BatchGenerator` does on insert): each
        sequence's tokens right-aligned, shorter ones left-padded. The quantization is the
        first quantized cache's; plain `KVCache`s are quantized to it."""
        quantized = [c for c in caches if hasattr(c, "bits")]
        if not quantized:
            raise ValueError("a quantized KV batch needs at least one quantized cache to take its bits from")
        group_size, bits = quantized[0].group_size, quantized[0].bits
        parts = [_sequence_kv(c, group_size, bits) for c in caches]
        lengths = [0 if p is None else p[0][0].shape[2] for p in parts]
        longest = max(lengths)
        padding = [longest - n for n in lengths]
        cache = cls(padding, group_size=group_size, bits=bits)
        if longest == 0:
            return cache
        ref = next(p[0] + p[1] for p in parts if p is not None)
        batch = [mx.zeros((len(caches), r.shape[1], longest, r.shape[3]), dtype=r.dtype) for r in ref]
        for i, (pad, part) in enumerate(zip(padding, parts, strict=True)):
            if part is not None:
                for buffer, x in zip(batch, part[0] + part[1], strict=True):
                    buffer[i : i + 1, :, pad:] = x
        cache.keys, cache.values = tuple(batch[:3]), tuple(batch[3:])
        cache.offset = cache.offset + longest
        cache._idx = longest
        return cache

    @property
    def nbytes(self):
        if self.keys is None:
            return 0
        return tree_reduce(lambda total, x: total + x.nbytes, (self.keys, self.values), 0)


def _as_quantized_batch(other: Any, group_size: int, bits: int) -> BatchQuantizedKVCache:
    """A plain `BatchKVCache` (a batch made from unquantized caches) quantized, so that
    `extend` accepts it; anything else is refused."""
    if not isinstance(other, BatchKVCache):
        raise ValueError(f"{type(other).__name__} cannot join a quantized KV batch")
    cache = BatchQuantizedKVCache([0], group_size=group_size, bits=bits)
    cache.offset, cache.left_padding, cache._idx = other.offset, other.left_padding, other._idx
    if other.keys is not None:
        cache.keys = _quantize(other.keys[..., : other._idx, :], group_size, bits)
        cache.values = _quantize(other.values[..., : other._idx, :], group_size, bits)
    return cache


class QuantizedBatchableKVCache(QuantizedKVCache):
    """One sequence's quantized cache that `BatchGenerator` can batch (`merge`)."""

    def size(self):
        # QuantizedKVCache leaves size() at the base class's 0; the batch code reads lengths.
        return self.offset

    @classmethod
    def merge(cls, caches):
        return BatchQuantizedKVCache.merge(caches)


def _kv_dims(model: Any) -> tuple[int, int, int]:
    """(layers, kv heads, head dim) of an mlx-lm attention model (llama, qwen2, qwen3, ...)."""
    layers = model.layers
    args = getattr(model, "args", None)
    attention = getattr(layers[0], "self_attn", None) if len(layers) else None
    # The layer's own count first: sharding (model.shard) divides it, not the config.
    kv_heads = getattr(attention, "n_kv_heads", None) or getattr(args, "num_key_value_heads", None)
    kv_heads = kv_heads or getattr(args, "num_attention_heads", None)
    head_dim = getattr(attention, "head_dim", None) or getattr(args, "head_dim", None)
    if not head_dim and args is not None and getattr(args, "num_attention_heads", None):
        head_dim = args.hidden_size // args.num_attention_heads
    if not kv_heads or not head_dim:
        raise ValueError(f"cannot tell the KV heads and head dim of {type(model).__name__}")
    return len(layers), int(kv_heads), int(head_dim)


def _model_dtype(model: Any) -> Any:
    """The activations' (hence the KV cache's) dtype: the first floating parameter, which for a
    quantized model is a scale, in the dtype it computes in."""
    params: Any = tree_flatten(model.parameters())
    for _, x in params:
        if mx.issubdtype(x.dtype, mx.floating):
            return x.dtype
    return mx.float16


def make_quantized_cache(model: Any, bits: int, group_size: int) -> list[QuantizedBatchableKVCache]:
    """A fresh per-layer quantized cache for one sequence, for `BatchGenerator.insert(caches=)`.
    Only for models whose every layer has a plain `KVCache`: sliding-window
    (RotatingKVCache), SSM/linear-attention (ArraysCache) and other layer caches are refused."""
    if bits not in BITS or group_size not in GROUP_SIZES:
        raise ValueError(f"KV cache quantization supports bits {BITS} and group sizes {GROUP_SIZES}")
    caches = make_prompt_cache(model)
    kinds = {type(c).__name__ for c in caches if type(c) is not KVCache}
    if kinds:
        raise ValueError(
            "KV cache quantization needs a plain KVCache in every layer; this model also uses "
            f"{', '.join(sorted(kinds))} (sliding-window or recurrent layers), which cannot be quantized"
        )
    _, _, head_dim = _kv_dims(model)
    if head_dim % group_size:
        raise ValueError(f"KV quantization group size {group_size} does not divide the head dim {head_dim}")
    return [QuantizedBatchableKVCache(group_size=group_size, bits=bits) for _ in caches]


def check_kv_quantization(model: Any, bits: int, group_size: int) -> None:
    """Once, when the model loads: ValueError unless its caches can be quantized and its
    attention takes mlx-lm's quantized path. A few architectures (gemma2, olmo, ...) do their
    own attention arithmetic on the cache's keys, which fails on quantized triples."""
    cache = make_quantized_cache(model, bits, group_size)
    try:
        mx.eval(model(mx.array([[0, 0]]), cache=cache))
    except Exception as e:  # whatever the model's own attention code raises on triples
        name = type(model).__module__.rsplit(".", 1)[-1]
        raise ValueError(f"{name} models compute attention themselves and cannot use a quantized KV cache") from e


def batchable(cache: list[Any]) -> list[Any]:
    """A per-sequence cache list with each plain `QuantizedKVCache` layer (what mlx-lm's
    `load_prompt_cache` gives back: it only knows its own classes by name) turned into a
    `QuantizedBatchableKVCache` over the same arrays, so BatchGenerator can insert it."""
    out = []
    for c in cache:
        if type(c) is QuantizedKVCache:
            c = QuantizedBatchableKVCache.from_state(c.state)
        out.append(c)
    return out


def kv_bytes_per_token(model: Any, bits: int | None, group_size: int, *, dtype: Any = None) -> int:
    """Bytes one token's keys and values take over all layers: unquantized (`bits` None) in the
    model's dtype (or `dtype`), or `bits`-bit codes plus a scale and a bias per group."""
    n_layers, kv_heads, head_dim = _kv_dims(model)
    itemsize = (dtype if dtype is not None else _model_dtype(model)).size
    if bits is None:
        per_head = head_dim * itemsize
    else:
        per_head = head_dim * bits // 8 + 2 * (head_dim // group_size) * itemsize
    return n_layers * 2 * kv_heads * per_head  # 2: keys and values

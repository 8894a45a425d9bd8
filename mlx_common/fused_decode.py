"""Decode's q/k/v projections and SwiGLU gate/up, one kernel launch each (CUDA, FAST_QUANT).

Why: one stream's 7B decode step on an H200 is bound by the host, not the GPU. MLX spends
~17 µs of CPU per kernel it launches, and a step launches 625 (10.4 ms a token, while its
kernels take 6.5 ms of GPU time; bench/kernels.py, docs/PERFORMANCE.md). Of a layer's ~22,
q, k, v with their three bias additions, and gate, up with the SwiGLU that joins them, become
two: the matrix-vector kernel reads one packed matrix and writes the finished outputs.

Layout: the packed matrices replace the layers' own weights: each projection keeps a view of
its rows (a slice of a contiguous buffer, not a copy), so prefill and MLX's kernels read the
same memory and a model takes no more of it. Which layers: q/k/v projections called in that
order on one input (mlx-lm's attention modules do; any other order just runs unfused), and MLP
classes whose `__call__` is mlx-lm's `down_proj(swiglu(gate_proj(x), up_proj(x)))`, read from
their source, so an architecture that changes its MLP is left alone rather than miscomputed.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from functools import cache
from itertools import chain

import mlx.core as mx
import mlx.nn as nn

from .flat_decode import FlatDecodeQuantizedLinear, decode_products, flatten_decode
from .quant_kernels import MAX_ROWS, Launch, cuda_device, launch_for, warm

SWIGLU_MLP = "return self.down_proj(swiglu(self.gate_proj(x), self.up_proj(x)))"


class Packed:
    """Projections' weights as one matrix (a plain object: its arrays are not parameters; the
    layers' views of them are)."""

    def __init__(self, layers: list[nn.Module], with_bias: bool) -> None:
        """`with_bias`: q/k/v, their linear biases packed too (zeros for a layer without);
        otherwise a SwiGLU gate/up pair."""
        first = layers[0]
        self.bits, self.group, self.mode = first.bits, first.group_size, first.mode
        self.in_features = first["weight"].shape[1] * 32 // first.bits
        self.sizes = [layer["weight"].shape[0] for layer in layers]
        self.kind = "qkv" if with_bias else "swiglu"
        self.split = tuple(self.sizes[:2]) if with_bias else ()
        """What the "qkv" kernel needs: q's and k's rows."""
        names = ["weight", "scales", "biases"] + (["bias"] if with_bias else [])
        zeros = [mx.zeros((n,), first["scales"].dtype) for n in self.sizes]
        packed = {
            name: mx.concatenate([layer.get(name, zero) for layer, zero in zip(layers, zeros, strict=True)])
            for name in names
        }
        mx.eval(packed)
        self.weight, self.scales, self.biases = packed["weight"], packed["scales"], packed["biases"]
        self.bias = packed.get("bias")
        start = 0
        for layer, n in zip(layers, self.sizes, strict=True):
            for name in names:
                if name in layer:
                    layer[name] = packed[name][start : start + n]
            start += n
        mx.eval([layer.parameters() for layer in layers])
        self.stash: tuple | None = None
        """q's call leaves (x, k, v) here for k's and v's calls on the same x."""

    def launch(self, x: mx.array):
        """The kernel for a decode input `x` (B, 1, K), or None (another device or shape)."""
        if not cuda_device() or x.ndim != 3 or x.shape[1] != 1 or x.shape[0] > MAX_ROWS:
            return None
        rows, n = x.shape[0], self.weight.shape[0]
        return launch_for(rows, self.in_features, n, self.bits, self.group, x.dtype, self.mode, self.kind, self.split)

    def inputs(self, x2d: mx.array) -> list[mx.array]:
        return [x2d, self.weight, self.scales, self.biases] + ([] if self.bias is None else [self.bias])


class FusedQ(FlatDecodeQuantizedLinear):
    packed: Packed

    def __call__(self, x: mx.array) -> mx.array:
        p = self.packed
        launch = p.launch(x) if self.fast_quant else None
        if launch is None:
            p.stash = None
            return super().__call__(x)
        q, k, v = launch(*p.inputs(x.reshape(x.shape[0], x.shape[2])))
        p.stash = (x, k[:, None, :], v[:, None, :])
        return q[:, None, :]


class FusedKV(FlatDecodeQuantizedLinear):
    packed: Packed
    index: int
    """1 for k, 2 for v: which of q's outputs this layer returns."""

    def __call__(self, x: mx.array) -> mx.array:
        stash = self.packed.stash
        if stash is not None and stash[0] is x:
            if self.index == 2:
                self.packed.stash = None
            return stash[self.index]
        return super().__call__(x)


def _fusable(layers: list) -> bool:
    if not all(type(layer) is FlatDecodeQuantizedLinear and layer.fast_quant for layer in layers):
        return False
    first = layers[0]
    return all(
        (layer.bits, layer.group_size, layer.mode) == (first.bits, first.group_size, first.mode)
        and layer["weight"].shape[1] == first["weight"].shape[1]
        and layer["scales"].dtype == first["scales"].dtype
        and layer.get("biases") is not None
        for layer in layers
    )


def _pairs(pair: list) -> bool:
    """Gate and up projections of one shape, without linear biases (the SwiGLU kernel adds none)."""
    return (
        all(isinstance(layer, nn.Module) for layer in pair)
        and _fusable(pair)
        and pair[0]["weight"].shape == pair[1]["weight"].shape
        and not any("bias" in layer for layer in pair)
    )


@cache
def _fused_mlp(cls: type) -> type | None:
    try:
        if SWIGLU_MLP not in inspect.getsource(cls.__call__):
            return None
    except (OSError, TypeError):
        return None

    def __call__(self, x: mx.array) -> mx.array:
        launch = self.packed.launch(x) if self.gate_proj.fast_quant else None
        if launch is None:
            return cls.__call__(self, x)
        (y,) = launch(*self.packed.inputs(x.reshape(x.shape[0], x.shape[2])))
        return self.down_proj(y[:, None, :])

    return type(f"Fused{cls.__name__}", (cls,), {"__call__": __call__})


def prepare_decode(model: nn.Module, fast: bool) -> int:
    """What a loader does to a model for decode: `flatten_decode`, then on CUDA with `fast`
    the packing, and every kernel variant the model's decode can take compiled in one pass
    (quant_kernels.warm: none is compiled while requests wait); returns how many layers were
    switched."""
    switched = flatten_decode(model, fast=fast)
    if fast and cuda_device():
        fuse(model)
        warm(chain(decode_products(model), fused_products(model)))
    return switched


def fuse(model: nn.Module) -> int:
    """Pack `model`'s q/k/v projections and SwiGLU gate/up pairs (layers flatten_decode made
    fast); returns how many groups were packed. Outputs do not change where the kernels do not
    run (another device, prefill, more rows than they take)."""
    fused = 0
    for _, module in model.named_modules():
        qkv = [module.get(name) for name in ("q_proj", "k_proj", "v_proj")]
        if all(isinstance(layer, nn.Module) for layer in qkv) and _fusable(qkv):
            packed = Packed(qkv, with_bias=True)  # the kernel adds one (zeros for Llama's)
            for index, layer in enumerate(qkv):
                layer.__class__ = FusedKV if index else FusedQ
                layer.packed, layer.index = packed, index
            fused += 1
        cls = _fused_mlp(type(module))  # type: ignore[arg-type]  # classes hash
        pair = [module.get(name) for name in ("gate_proj", "up_proj")]
        if cls is not None and _pairs(pair):
            module.packed = Packed(pair, with_bias=False)
            module.__class__ = cls
            fused += 1
    return fused


def fused_products(model: nn.Module) -> Iterator[tuple[Launch | None, list[mx.array]]]:
    """(launch, inputs) of every decode row count of the model's packed layers."""
    packs = {id(p): p for _, module in model.named_modules() if (p := getattr(module, "packed", None)) is not None}
    for p in packs.values():
        for rows in range(1, MAX_ROWS + 1):
            x = mx.zeros((rows, 1, p.in_features), p.scales.dtype)
            yield p.launch(x), p.inputs(x[:, 0, :])

"""Batched decode on quantized models: give quantized matmuls 2-D activations.

During batched decode mlx-lm calls the model with `(B, 1)` tokens, so every quantized layer
receives `(B, 1, K)` activations. MLX's CUDA backend (mlx 0.32.4) treats those as B separate
matrix-vector products, reading the packed weights once per sequence: a 7B 4-bit model went
from 145 tok/s at batch 1 to only 343 at batch 64 on an H100 (../shared/gpu/README.md).
Reshaped to `(B, K)` the same product takes the quantized matrix-matrix kernel, which reads the
weights once for the whole batch (1,436 tok/s at batch 32 there). The arithmetic per row is
the same, so outputs do not change (tests/test_flat_decode.py checks that on the CPU).

`flatten_decode(model)` switches the model's quantized linear layers (and a tied, quantized
embedding used as the output head) to classes that do the reshape; parameters, names and
weights stay as they are, so no mlx-lm code is forked. `FLAT_DECODE=0` leaves a model alone.

With `fast=True` (FAST_QUANT, on CUDA) the same layers run decode's few-row products with the
matrix-vector kernels of mlx_common/quant_kernels.py, and MLX's kernel for everything else;
`mlx_common.fused_decode.prepare_decode` also runs q/k/v projections and SwiGLU gate/up pairs
as one launch each.
"""

from __future__ import annotations

from collections.abc import Iterator

import mlx.core as mx
import mlx.nn as nn

from .quant_kernels import MAX_ROWS, Launch, fast_quantized_matmul, launch_for


def _flat(x: mx.array) -> bool:
    # Only the decode shape: prefill (B, L>1, K) already takes the matrix-matrix kernel.
    return x.ndim == 3 and x.shape[1] == 1


def _matmul(layer: nn.Module, x: mx.array) -> mx.array:
    if layer.fast_quant:  # None when the kernels do not apply (shape, dtype, device)
        y = fast_quantized_matmul(
            x, layer["weight"], layer["scales"], layer.get("biases"),
            group_size=layer.group_size, bits=layer.bits, mode=layer.mode,
        )  # fmt: skip
        if y is not None:
            return y
    return mx.quantized_matmul(
        x, layer["weight"], scales=layer["scales"], biases=layer.get("biases"),
        transpose=True, group_size=layer.group_size, bits=layer.bits, mode=layer.mode,
    )  # fmt: skip


def _product(layer: nn.Module, x: mx.array) -> mx.array:
    if _flat(x):
        return _matmul(layer, x.reshape(x.shape[0], x.shape[2]))[:, None, :]
    return _matmul(layer, x)


class FlatDecodeQuantizedLinear(nn.QuantizedLinear):
    fast_quant = False

    def __call__(self, x: mx.array) -> mx.array:
        y = _product(self, x)
        return y + self["bias"] if "bias" in self else y


class FlatDecodeQuantizedEmbedding(nn.QuantizedEmbedding):
    fast_quant = False

    def as_linear(self, x: mx.array) -> mx.array:
        return _product(self, x)


# Exact classes only: a subclass of these (QQLinear, a model's own variant) may compute
# differently and is left alone.
_SWAPS: dict[type[nn.Module], type[nn.Module]] = {
    nn.QuantizedLinear: FlatDecodeQuantizedLinear,
    nn.QuantizedEmbedding: FlatDecodeQuantizedEmbedding,
}


def flatten_decode(model: nn.Module, fast: bool = False) -> int:
    """Switch `model`'s quantized layers in place (with `fast`, to the CUDA matrix-vector
    kernels where they apply); returns how many were switched. Loaders call
    `fused_decode.prepare_decode`, which does this, the fusing and the kernels' compiling."""
    switched = 0
    for _, module in model.named_modules():
        swap = _SWAPS.get(type(module))
        if swap is not None:
            module.__class__ = swap
            module.fast_quant = fast
            switched += 1
    return switched


def decode_products(model: nn.Module) -> Iterator[tuple[Launch | None, list[mx.array]]]:
    """(launch, inputs) of every few-row product the model's fast layers can run with our
    kernels: what quant_kernels.warm compiles at load."""
    for _, layer in model.named_modules():
        if type(layer) not in _SWAPS.values() or not layer.fast_quant or layer.get("biases") is None:
            continue
        w, scales, biases = layer["weight"], layer["scales"], layer["biases"]
        k = w.shape[1] * 32 // layer.bits
        for rows in range(2, MAX_ROWS + 1):  # one row: MLX's kernel (fast_quantized_matmul)
            launch = launch_for(rows, k, w.shape[0], layer.bits, layer.group_size, scales.dtype, layer.mode)
            yield launch, [mx.zeros((rows, k), scales.dtype), w, scales, biases]

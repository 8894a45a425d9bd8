"""Float32 weights for a quantized model on a CPU (CPU_DEQUANTIZE_MAX_GB).

Why: on a CPU, MLX's (0.32.4) quantized matmul is its own loop at ~3 GFLOP/s whatever BLAS is
there, while a float32 matmul goes to `cblas_sgemm`: 23–103 GFLOP/s with OpenBLAS preloaded
(mlx_common/cpu_blas.py). A small quantized model is therefore faster dequantized — SmolLM2-135M
4-bit is 0.54 GB as float32 — at the cost of memory (about 8x the 4-bit weights) and of a KV
cache in float32 (twice bfloat16's bytes per token; the memory budget counts it, as it reads the
model's dtype). Only models whose float32 size is at most CPU_DEQUANTIZE_MAX_GB are converted.

Outputs change slightly: the quantized model computes in its scales' dtype (bfloat16 for
most mlx-community models), the dequantized one in float32, with the same weight values
(`mx.dequantize` of the same codes); greedy continuations agree most of the time, not always
(tests/test_cpu_path.py, bench/cpu_path.py measure it).
"""

from __future__ import annotations

import logging
from typing import Any

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from .memory import GB

log = logging.getLogger("mis.cpu_weights")


def _quantized_modules(model: nn.Module) -> dict[str, Any]:
    # Anything with packed codes: QuantizedLinear, QuantizedEmbedding, mlx-lm's QuantizedSwitchLinear.
    return {name: m for name, m in model.named_modules() if hasattr(m, "bits") and "scales" in m}


def float32_bytes(model: nn.Module) -> int:
    """The model's size as float32, counted from its shapes before anything is converted:
    packed codes count their unpacked values, quantization scales and biases nothing."""
    quantized = _quantized_modules(model)
    count = 0
    params: Any = tree_flatten(model.parameters())  # (name, array) pairs; typed as a union with str
    for name, value in params:
        owner, _, leaf = name.rpartition(".")
        module = quantized.get(owner)
        if module is None:
            count += value.size
        elif leaf == "weight":
            count += value.size * 32 // module.bits
        elif leaf not in ("scales", "biases"):
            count += value.size  # a linear layer's own bias
    return count * 4


def dequantize_for_cpu(model: nn.Module, max_gb: float) -> int | None:
    """Dequantize `model` in place and cast it to float32 when it is quantized and its float32
    size is at most `max_gb` (0: never); returns that size in bytes, or None when left as is.
    The caller checks that MLX computes on the CPU."""
    from mlx_lm.utils import dequantize_model

    if max_gb <= 0 or not _quantized_modules(model):
        return None
    size = float32_bytes(model)
    if size > max_gb * GB:
        log.info("CPU: kept the quantized weights (%.2f GB as float32 > CPU_DEQUANTIZE_MAX_GB=%g)", size / GB, max_gb)
        return None
    dequantize_model(model)
    model.set_dtype(mx.float32)
    mx.eval(model.parameters())
    left = len(_quantized_modules(model))  # a quantized class dequantize_model does not know
    log.info(
        "CPU: dequantized the weights to float32 (%.2f GB; CPU_DEQUANTIZE_MAX_GB=%g)%s",
        size / GB,
        max_gb,
        f"; {left} layers stay quantized" if left else "",
    )
    return size

"""Affine 4-/8-bit matrix-vector kernels for decode on CUDA, written with `mx.fast.cuda_kernel`.

Why: MLX 0.32.4's CUDA `quantized_matmul` for one row (`qmv_kernel`) reads ~1 TB/s of an
H200's 4.8 TB/s on a 7B model's large layers, and its few-row path is worse (2 rows take twice
as long as one; 4 rows four times), so decode spends most of each step there. These kernels,
timed on the GPU itself (CUPTI, bench/kernels.py; docs/PERFORMANCE.md):

- y[m, n] = sum over groups g of s[n,g] * (q[n,g,:] . x[m,g,:]) + b[n,g] * sum(x[m,g,:]): the
  scale and bias are applied once per group, not per weight.
- A quantized value becomes a float without an int-to-float conversion (a slow, quarter-rate
  instruction): it is masked *in place* in its 16-bit half, OR-ed into the mantissa of 2^23 and
  2^23 is subtracted (exact); the x value it multiplies was scaled by 2^-(bits x position)
  beforehand, once per chunk for all R output rows, so no shift is needed per weight. (The
  scale must be a literal bit pattern: a constexpr helper computing it recursively compiled
  to a call per value and made the kernel 2x slower than MLX's.)
- Each thread loads 16 bytes of packed weights for U chunks of R rows before using any (bytes
  in flight); a block's warps split K so short rows still fill the GPU.

`fast_quantized_matmul(x, ...)` returns None whenever a kernel does not apply (not CUDA,
unsupported bits/group/dtype/shape, or a row count where MLX's tensor-core kernel is faster):
the caller then runs MLX's. `plan()` is that decision as a pure function (tested on the CPU).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from typing import Any

import mlx.core as mx

from . import quant_kernel_source as source

MAX_ROWS = 8
"""Rows (sequences x tokens) the matrix-vector kernel takes; more go to MLX's matrix kernel."""
WIDE = 8192
"""Output features from which MLX's tensor-core kernel is faster than ours for 5-8 rows."""
BITS = (4, 8)
GROUPS = (32, 64, 128)
DTYPES = ("bfloat16", "float16")
_DTYPE_NAMES = {mx.bfloat16: "bfloat16", mx.float16: "float16"}


@dataclass(frozen=True)
class Plan:
    rows: int
    """Compiled for exactly this many rows (a kernel per count: accumulators live in registers)."""
    r: int
    """Output rows per block."""
    warps: int
    """Warps per block, splitting K."""
    u: int = 1
    """Chunks a thread loads per pass before using them (bytes in flight)."""


def plan(rows: int, in_features: int, out_features: int, bits: int, group: int, dtype: str, mode: str) -> Plan | None:
    """The kernel configuration for one product, or None for MLX's kernel."""
    if mode != "affine" or bits not in BITS or group not in GROUPS or dtype not in DTYPES:
        return None
    if not 1 <= rows <= MAX_ROWS:
        return None
    per_load = 128 // bits  # values in one 16-byte weight load; a load must not cross a group
    if in_features % per_load or in_features % group or out_features < 1:
        return None
    # Measured on an H200 (Qwen2.5-7B shapes, 4-bit group 64): one row reads best with 8 rows
    # per block and two chunks in flight; a narrow layer (the 512-wide k/v projections) with
    # four warps splitting K. From two rows on, four rows per block (accumulators are rows x R
    # registers). Past four rows MLX's tensor-core kernel wins on wide layers (18944, the head),
    # ours still on narrow ones (3584 and less: 2.4-7x).
    wide = out_features >= WIDE
    if rows == 1:
        return Plan(rows, r=8, warps=2, u=2) if out_features >= 1024 else Plan(rows, r=4, warps=4, u=1)
    if rows <= 4:
        return Plan(rows, r=4, warps=1, u=2) if wide else Plan(rows, r=4, warps=4, u=1)
    return None if wide else Plan(rows, r=4, warps=4, u=1)


_CUDA_TYPES = {mx.bfloat16: "__nv_bfloat16", mx.float16: "__half"}


@dataclass(frozen=True, slots=True)
class Launch:
    """One product's kernel, ready to call: per call, only the call itself is left."""

    kernel: Any
    grid: tuple[int, int, int]
    threadgroup: tuple[int, int, int]
    output_shapes: list[tuple[int, int]]
    output_dtypes: list[mx.Dtype]

    def __call__(self, *inputs: mx.array) -> list[mx.array]:
        return self.kernel(
            inputs=list(inputs),
            grid=self.grid,
            threadgroup=self.threadgroup,
            output_shapes=self.output_shapes,
            output_dtypes=self.output_dtypes,
        )


@cache
def _variant(kind: str, dtype: mx.Dtype, bits: int, group: int, p: Plan, split: tuple[int, ...]):
    """A kernel with its constants written into the source rather than passed as template
    arguments, which MLX formats into the whole source again on every call (dozens a step)."""
    bf16 = dtype == mx.bfloat16
    decls = [
        f"using T = {_CUDA_TYPES[dtype]}",
        f"constexpr bool BF16 = {'true' if bf16 else 'false'}",
        f"constexpr int BITS = {bits}",
        f"constexpr int GROUP = {group}",
        f"constexpr int M = {p.rows}",
        f"constexpr int R = {p.r}",
        f"constexpr int WARPS = {p.warps}",
        f"constexpr int U = {p.u}",
    ]
    if kind == "qkv":
        decls += [f"constexpr int NQ = {split[0]}", f"constexpr int NK = {split[1]}"]
    setup, row_of, epilogue = source.KINDS[kind]
    body = source.GEMV.replace("ROWS_SETUP", setup).replace("ROW_OF(r)", row_of) + epilogue
    inputs, outputs = source.IO[kind]
    tag = "_".join(map(str, ("bf16" if bf16 else "f16", bits, group, p.rows, p.r, p.warps, p.u, *split)))
    return mx.fast.cuda_kernel(
        name=f"fq_{kind}_{source.TAG}_{tag}",
        input_names=inputs,
        output_names=outputs,
        source="".join(f"  {decl};\n" for decl in decls) + body,
        header=source.HEADER,
    )


@cache
def launch_for(
    rows: int,
    in_features: int,
    out_features: int,
    bits: int,
    group: int,
    dtype: mx.Dtype,
    mode: str,
    kind: str = "plain",
    split: tuple[int, ...] = (),
) -> Launch | None:
    """The prepared kernel for one product's shape and format, or None for MLX's kernel.
    `out_features` counts the packed matrix's rows; for "qkv", `split` is (q rows, k rows)."""
    name = _DTYPE_NAMES.get(dtype)
    p = plan(rows, in_features, out_features, bits, group, name, mode) if name else None
    if p is None:
        return None
    # A SwiGLU block writes R/2 outputs (it reads a gate and an up row for each).
    swiglu = kind == "swiglu"
    sizes, per_block = ([out_features // 2], p.r // 2) if swiglu else ([*split, out_features - sum(split)], p.r)
    threads = 32 * p.warps
    blocks = -(-sum(sizes) // per_block)
    return Launch(_variant(kind, dtype, bits, group, p, split), (blocks * threads, 1, 1), (threads, 1, 1),
                  [(rows, n) for n in sizes], [dtype] * len(sizes))  # fmt: skip


def warm(products: Iterable[tuple[Launch | None, list[mx.array]]]) -> int:
    """Run each distinct kernel among these (launch, inputs) once, so none is compiled (NVRTC,
    seconds each on a machine's first load) while requests wait; returns how many ran. MLX
    keeps compiled kernels on disk, so a later load reads them."""
    outputs, seen = [], set()
    for launch, inputs in products:
        if launch is not None and launch.kernel not in seen:
            seen.add(launch.kernel)
            outputs += launch(*inputs)
    mx.eval(outputs)
    return len(seen)


@cache
def cuda_device() -> bool:
    """Whether MLX runs on an NVIDIA GPU here (the kernels are CUDA source)."""
    return bool(getattr(mx, "cuda", None) and mx.cuda.is_available()) and mx.default_device() == mx.gpu


def fast_quantized_matmul(
    x: mx.array,
    w: mx.array,
    scales: mx.array,
    biases: mx.array | None,
    *,
    group_size: int,
    bits: int,
    mode: str = "affine",
    one_row: bool = False,
) -> mx.array | None:
    """`mx.quantized_matmul(x, w, scales, biases, transpose=True, ...)` by these kernels, or
    None when they do not apply here (the caller then runs MLX's).

    A one-row product is left to MLX unless `one_row`: our kernel takes half the GPU time
    there, but a launch of it costs the host more than one of MLX's built-in kernel, and one
    stream's decode is bound by the host — measured on an H200, 7B 4-bit, q/k/v and gate/up
    fused either way: 181 tok/s with MLX's kernel for the other products, 142 with ours
    (bench/kernels.py; docs/PERFORMANCE.md). From two rows on MLX's kernel takes 2-4x ours."""
    if biases is None or not cuda_device():
        return None
    in_features = x.shape[-1]
    rows = x.size // in_features if in_features else 0
    if rows == 1 and not one_row:
        return None
    launch = launch_for(rows, in_features, w.shape[0], bits, group_size, x.dtype, mode)
    if launch is None or scales.dtype != x.dtype or biases.dtype != x.dtype:
        return None
    if x.ndim == 2:  # decode's shape (flat_decode): no reshapes, each a node MLX evaluates
        return launch(x, w, scales, biases)[0]
    return launch(x.reshape(rows, in_features), w, scales, biases)[0].reshape(*x.shape[:-1], w.shape[0])

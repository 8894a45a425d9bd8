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

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from typing import Any

import mlx.core as mx

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


_HEADER = """
// The two 16-bit floats of a 32-bit word, by bit operations: taking the address of a
// register to reinterpret it would put it in (slow) local memory.
template <bool BF16>
__device__ __forceinline__ float fq_lo(unsigned int w) {
  if constexpr (BF16) return __uint_as_float(w << 16);
  else return __half2float(__ushort_as_half(static_cast<unsigned short>(w & 0xFFFFu)));
}
template <bool BF16>
__device__ __forceinline__ float fq_hi(unsigned int w) {
  if constexpr (BF16) return __uint_as_float(w & 0xFFFF0000u);
  else return __half2float(__ushort_as_half(static_cast<unsigned short>(w >> 16)));
}
"""

_GEMV = """
  constexpr int VALS = 128 / BITS;              // values in one 16-byte weight load
  constexpr int PER_HALF = 16 / BITS;           // values in 16 bits
  constexpr unsigned int MASK = (1u << BITS) - 1u;
  const int N = w_shape[0];
  const int K = x_shape[1];
  const int words = K / (32 / BITS);
  const int groups = K / GROUP;
  const int chunks = K / VALS;
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  ROWS_SETUP

  float acc[M][R];
  #pragma unroll
  for (int m = 0; m < M; ++m) {
    #pragma unroll
    for (int r = 0; r < R; ++r) acc[m][r] = 0.0f;
  }

  // U chunks per thread per pass, their loads issued before any arithmetic: more bytes in flight.
  for (int c0 = warp * 32 + lane; c0 < chunks; c0 += WARPS * 32 * U) {
    uint4 wv[U][R];
    float sc[U][R], bi[U][R];
    #pragma unroll
    for (int u = 0; u < U; ++u) {
      const int c = min(c0 + u * WARPS * 32, chunks - 1);  // a chunk past the row is loaded, not used
      const int g = c * VALS / GROUP;
      #pragma unroll
      for (int r = 0; r < R; ++r) {
        const int n = ROW_OF(r);  // a row past the end is clamped: computed, never written
        wv[u][r] = __ldg(reinterpret_cast<const uint4*>(w + (size_t)n * words) + c);
        sc[u][r] = static_cast<float>(scales[(size_t)n * groups + g]);
        bi[u][r] = static_cast<float>(biases[(size_t)n * groups + g]);
      }
    }
    #pragma unroll
    for (int u = 0; u < U; ++u) {
      const int c = c0 + u * WARPS * 32;
      if (c >= chunks) break;
      const int k0 = c * VALS;
      #pragma unroll
      for (int m = 0; m < M; ++m) {
        float xs[VALS];
        float xsum = 0.0f;
        const uint4* xp = reinterpret_cast<const uint4*>(x + (size_t)m * K + k0);
        #pragma unroll
        for (int i = 0; i < VALS / 8; ++i) {
          const uint4 xu = __ldg(xp + i);
          const unsigned int xw[4] = {xu.x, xu.y, xu.z, xu.w};
          #pragma unroll
          for (int j = 0; j < 8; ++j) {
            const float v = (j & 1) ? fq_hi<BF16>(xw[j / 2]) : fq_lo<BF16>(xw[j / 2]);
            xsum += v;
            xs[i * 8 + j] = v * __uint_as_float((127u - BITS * (j % PER_HALF)) << 23);  // 2^-(bits * position)
          }
        }
        #pragma unroll
        for (int r = 0; r < R; ++r) {
          const unsigned int ws[4] = {wv[u][r].x, wv[u][r].y, wv[u][r].z, wv[u][r].w};
          float d = 0.0f;
          #pragma unroll
          for (int i = 0; i < 4; ++i) {
            #pragma unroll
            for (int hf = 0; hf < 2; ++hf) {
              const unsigned int half = hf ? (ws[i] >> 16) : ws[i];
              #pragma unroll
              for (int p = 0; p < PER_HALF; ++p) {
                const unsigned int q = half & (MASK << (BITS * p));
                const float f = __uint_as_float(0x4B000000u | q) - 8388608.0f;
                d = fmaf(f, xs[(i * 2 + hf) * PER_HALF + p], d);
              }
            }
          }
          acc[m][r] = fmaf(sc[u][r], d, fmaf(bi[u][r], xsum, acc[m][r]));
        }
      }
    }
  }

  #pragma unroll
  for (int m = 0; m < M; ++m) {
    #pragma unroll
    for (int r = 0; r < R; ++r) {
      float v = acc[m][r];
      #pragma unroll
      for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
      acc[m][r] = v;
    }
  }
  __shared__ float part[WARPS][M * R];
  if (lane == 0) {
    #pragma unroll
    for (int m = 0; m < M; ++m) {
      #pragma unroll
      for (int r = 0; r < R; ++r) part[warp][m * R + r] = acc[m][r];
    }
  }
  __syncthreads();
"""

# What a block writes, by kind of product: ROWS_SETUP and ROW_OF(r) say which packed rows its R
# output rows read; the epilogue turns the R sums per input row (part[warp][m * R + r]) into
# outputs.
_CONSECUTIVE_ROWS = ("const int n0 = blockIdx.x * R;", "min(n0 + (r), N - 1)")
_PLAIN = (
    *_CONSECUTIVE_ROWS,
    """
  for (int i = threadIdx.x; i < M * R; i += WARPS * 32) {
    const int m = i / R;
    const int r = i % R;
    if (n0 + r < N) {
      float s = 0.0f;
      #pragma unroll
      for (int v = 0; v < WARPS; ++v) s += part[v][i];
      y[(size_t)m * N + n0 + r] = static_cast<T>(s);
    }
  }
""",
)
# q, k and v projections from one packed matrix [Wq; Wk; Wv] (NQ, NK rows; the rest v), each
# output with its linear bias added (zeros for layers without), rounded as MLX rounds the
# product and then the sum.
_QKV = (
    *_CONSECUTIVE_ROWS,
    """
  for (int i = threadIdx.x; i < M * R; i += WARPS * 32) {
    const int m = i / R;
    const int n = n0 + i % R;
    if (n < N) {
      float s = 0.0f;
      #pragma unroll
      for (int v = 0; v < WARPS; ++v) s += part[v][i];
      const T out = static_cast<T>(static_cast<float>(static_cast<T>(s)) + static_cast<float>(bias[n]));
      if (n < NQ) yq[(size_t)m * NQ + n] = out;
      else if (n < NQ + NK) yk[(size_t)m * NK + n - NQ] = out;
      else yv[(size_t)m * (N - NQ - NK) + n - NQ - NK] = out;
    }
  }
""",
)
# silu(x Wg^T) * (x Wu^T) from one packed matrix [Wg; Wu]: a block's first R/2 rows read gate
# rows, the others the up rows of the same features; rounded step by step as MLX's swiglu.
_SWIGLU = (
    "constexpr int H = R / 2; const int NH = N / 2; const int j0 = blockIdx.x * H;",
    "((r) < H ? 0 : NH) + min(j0 + (r) % H, NH - 1)",
    """
  for (int i = threadIdx.x; i < M * H; i += WARPS * 32) {
    const int m = i / H;
    const int j = i % H;
    if (j0 + j < NH) {
      float g = 0.0f, u = 0.0f;
      #pragma unroll
      for (int v = 0; v < WARPS; ++v) {
        g += part[v][m * R + j];
        u += part[v][m * R + H + j];
      }
      const float gr = static_cast<float>(static_cast<T>(g));
      const float sig = static_cast<float>(static_cast<T>(1.0f / (1.0f + __expf(-gr))));
      const float act = static_cast<float>(static_cast<T>(gr * sig));
      y[(size_t)m * NH + j0 + j] = static_cast<T>(act * static_cast<float>(static_cast<T>(u)));
    }
  }
""",
)
KINDS = {"plain": _PLAIN, "qkv": _QKV, "swiglu": _SWIGLU}


_SOURCE_TAG = hashlib.sha1(repr((_HEADER, _GEMV, KINDS)).encode()).hexdigest()[:10]
"""In every kernel's name: MLX caches compiled kernels on disk by name alone (MLX_PTX_CACHE_DIR,
else <tmp>/mlx/<version>/ptx), so a changed source under an old name would run the old kernel."""

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


_IO = {  # a kind's input and output names
    "plain": (["x", "w", "scales", "biases"], ["y"]),
    "qkv": (["x", "w", "scales", "biases", "bias"], ["yq", "yk", "yv"]),
    "swiglu": (["x", "w", "scales", "biases"], ["y"]),
}


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
    setup, row_of, epilogue = KINDS[kind]
    body = _GEMV.replace("ROWS_SETUP", setup).replace("ROW_OF(r)", row_of) + epilogue
    inputs, outputs = _IO[kind]
    tag = "_".join(map(str, ("bf16" if bf16 else "f16", bits, group, p.rows, p.r, p.warps, p.u, *split)))
    return mx.fast.cuda_kernel(
        name=f"fq_{kind}_{_SOURCE_TAG}_{tag}",
        input_names=inputs,
        output_names=outputs,
        source="".join(f"  {decl};\n" for decl in decls) + body,
        header=_HEADER,
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

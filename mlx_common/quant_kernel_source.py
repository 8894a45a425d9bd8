"""The CUDA source of the decode kernels that mlx_common/quant_kernels.py compiles and launches:
one matrix-vector main loop (`GEMV`) and, per kind of product (`KINDS`), which output rows a
block computes and what it writes (plain; q/k/v with their biases; SwiGLU of gate and up).
How the main loop reads 4-/8-bit weights fast is in quant_kernels' docstring.
(In `mx.fast.cuda_kernel` source `uint` is undefined: `unsigned int` / `uint32_t`.)"""

import hashlib

HEADER = """
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

GEMV = """
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


TAG = hashlib.sha1(repr((HEADER, GEMV, KINDS)).encode()).hexdigest()[:10]
"""In every kernel's name: MLX caches compiled kernels on disk by name alone (MLX_PTX_CACHE_DIR,
else <tmp>/mlx/<version>/ptx), so a changed source under an old name would run the old kernel."""


IO = {  # a kind's input and output names
    "plain": (["x", "w", "scales", "biases"], ["y"]),
    "qkv": (["x", "w", "scales", "biases", "bias"], ["yq", "yk", "yv"]),
    "swiglu": (["x", "w", "scales", "biases"], ["y"]),
}

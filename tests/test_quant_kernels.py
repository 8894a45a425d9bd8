"""The CUDA decode kernels (mlx_common/quant_kernels.py): which products they take (anywhere),
and that their outputs match `mx.quantized_matmul` (where CUDA is; skipped elsewhere)."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import pytest

from mlx_common import quant_kernels as qk
from mlx_common.flat_decode import flatten_decode

ON_CUDA = qk.cuda_device()
needs_cuda = pytest.mark.skipif(not ON_CUDA, reason="the kernels are CUDA source: MLX here runs on the CPU")


def test_plan_takes_decode_products_only():
    take = qk.plan(1, 3584, 18944, 4, 64, "bfloat16", "affine")
    assert take == qk.Plan(1, r=8, warps=2, u=2)
    assert qk.plan(1, 3584, 512, 4, 64, "bfloat16", "affine") == qk.Plan(1, r=4, warps=4, u=1)
    assert qk.plan(4, 3584, 152064, 8, 128, "float16", "affine") == qk.Plan(4, r=4, warps=1, u=2)
    assert qk.plan(8, 18944, 3584, 4, 32, "bfloat16", "affine") == qk.Plan(8, r=4, warps=4, u=1)
    # MLX's kernel: a wide layer past four rows (its tensor-core path is faster), prefill, other
    # formats, dtypes and shapes a 16-byte load cannot cover.
    assert qk.plan(8, 3584, 18944, 4, 64, "bfloat16", "affine") is None
    assert qk.plan(9, 3584, 512, 4, 64, "bfloat16", "affine") is None
    assert qk.plan(0, 3584, 512, 4, 64, "bfloat16", "affine") is None
    assert qk.plan(1, 3584, 512, 3, 64, "bfloat16", "affine") is None
    assert qk.plan(1, 3584, 512, 4, 16, "bfloat16", "affine") is None
    assert qk.plan(1, 3584, 512, 4, 64, "float32", "affine") is None
    assert qk.plan(1, 3584, 512, 4, 32, "bfloat16", "mxfp4") is None
    assert qk.plan(1, 3600, 512, 4, 32, "bfloat16", "affine") is None  # 3600 % 32: a load would straddle


def test_not_on_cuda_means_mlx_kernel():
    if ON_CUDA:
        pytest.skip("this machine has CUDA")
    w, s, b = mx.quantize(mx.random.normal((64, 128)), group_size=64, bits=4)
    x = mx.random.normal((1, 128))
    assert qk.fast_quantized_matmul(x, w, s, b, group_size=64, bits=4, one_row=True) is None


def test_flatten_decode_marks_layers_fast_only_when_asked():
    model = nn.Sequential(nn.QuantizedLinear(128, 64, group_size=64, bits=4))
    flatten_decode(model, fast=True)
    assert model.layers[0].fast_quant is True
    model = nn.Sequential(nn.QuantizedLinear(128, 64, group_size=64, bits=4))
    flatten_decode(model)
    assert model.layers[0].fast_quant is False


SHAPES = [
    (1, 3584, 512),
    (1, 896, 4864),
    (2, 4864, 896),
    (3, 1024, 1000),
    (4, 2048, 8192),
    (7, 512, 3584),
    (8, 256, 96),
]
FORMATS = [(bits, group, dtype) for bits in (4, 8) for group in (32, 64, 128) for dtype in (mx.bfloat16, mx.float16)]
"""Every format once, every shape once: each case compiles a kernel variant (NVRTC, ~3 s), so the
cross product (84 cases) took 289 s of a lent GPU for no more coverage."""


def check_against_mlx(bits: int, group: int, dtype, rows: int, k: int, n: int) -> None:
    mx.random.seed(rows * 7 + k + n + bits + group)
    w, s, b = mx.quantize(mx.random.normal((n, k)).astype(dtype) * 0.05, group_size=group, bits=bits)
    x = mx.random.normal((rows, k)).astype(dtype)
    ours = qk.fast_quantized_matmul(x, w, s, b, group_size=group, bits=bits, one_row=True)
    if qk.plan(rows, k, n, bits, group, str(dtype).removeprefix("mlx.core."), "affine") is None:
        assert ours is None
        return
    assert ours is not None
    ref = mx.quantized_matmul(x.astype(mx.float32), w, s.astype(mx.float32), b.astype(mx.float32),
                              transpose=True, group_size=group, bits=bits)  # fmt: skip
    err = mx.abs(ours.astype(mx.float32) - ref).max().item()
    scale = mx.abs(ref).max().item()
    # The output is rounded to 16 bits (bf16: 2^-8 relative); the sums run in float32.
    assert err <= (2**-7 if dtype == mx.bfloat16 else 2**-10) * scale, (err, scale)


@needs_cuda
@pytest.mark.parametrize("index", range(len(FORMATS)))
def test_every_format_matches_mlx_within_16_bit_tolerance(index):
    bits, group, dtype = FORMATS[index]
    rows, k, n = next(shape for shape in SHAPES[index % len(SHAPES) :] + SHAPES if shape[1] % group == 0)
    check_against_mlx(bits, group, dtype, rows, k, n)


@needs_cuda
@pytest.mark.parametrize("rows,k,n", SHAPES)
def test_every_shape_matches_mlx_within_16_bit_tolerance(rows, k, n):
    check_against_mlx(4, 64, mx.bfloat16, rows, k, n)


@needs_cuda
def test_decode_shape_goes_through_the_kernel_in_a_layer():
    layer = nn.QuantizedLinear(1024, 512, bias=True, group_size=64, bits=4)
    layer.set_dtype(mx.bfloat16)
    model = nn.Sequential(layer)
    x = mx.random.normal((3, 1, 1024)).astype(mx.bfloat16)
    ref = model(x)
    flatten_decode(model, fast=True)
    got = model(x)
    assert got.shape == ref.shape == (3, 1, 512)
    assert mx.allclose(got.astype(mx.float32), ref.astype(mx.float32), rtol=2e-2, atol=2e-2).item()


@needs_cuda
def test_a_layers_one_row_product_is_left_to_mlx():
    w, s, b = mx.quantize(mx.random.normal((512, 1024)).astype(mx.bfloat16), group_size=64, bits=4)
    x = mx.random.normal((1, 1024)).astype(mx.bfloat16)
    assert qk.fast_quantized_matmul(x, w, s, b, group_size=64, bits=4) is None
    assert qk.fast_quantized_matmul(x, w, s, b, group_size=64, bits=4, one_row=True) is not None

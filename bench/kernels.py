"""Per-layer speed of decode's quantized matmul: MLX's `quantized_matmul`, our CUDA kernels
(mlx_common/quant_kernels.py, FAST_QUANT) and a bf16 matmul of the same shape, for the
Qwen2.5-7B layer shapes at 1, 2, 4, 8 and 32 rows; optionally a 7B decode in-process with and
without our kernels (tokens/s and greedy agreement).

    python bench/kernels.py [--rows 1 2 4 8 32] [--bits 4] [--group-size 64] [--repeats 30]
                            [--decode MODEL_DIR --prompts 32 --tokens 128]

Timing: MLX spends ~15 µs of CPU per operation building its CUDA graph, more than a small
layer's kernel takes, so wall-clock time measures MLX, not the kernel. Where PyTorch with CUDA
is importable (it is only a measuring tool here, never a dependency), kernel times come from
the GPU itself (CUPTI, through torch.profiler, which sees every kernel of the process); else
from queued launches and one evaluation (`timing: wall` in the output). GB/s counts the bytes a
launch must read: packed weights, scales and biases (bf16: the weights) plus the input rows.
Prints a table and writes bench/results/kernels-<time>.json. Meaningful on a GPU.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import mlx.core as mx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RESULTS, device_name, write_result

from mlx_common import quant_kernels

SHAPES = {  # (out features, in features) of Qwen2.5-7B's layers and its head
    "mlp up/gate 18944x3584": (18944, 3584),
    "mlp down 3584x18944": (3584, 18944),
    "lm head 152064x3584": (152064, 3584),
    "attn o 3584x3584": (3584, 3584),
    "attn k/v 512x3584": (512, 3584),
}


def gpu_clock() -> Callable[[Callable[[], mx.array], int], float] | None:
    """Seconds per call of `step` measured on the GPU (CUPTI via torch.profiler), or None."""
    try:
        import torch
        from torch.profiler import ProfilerActivity, profile

        if not torch.cuda.is_available():
            return None
        torch.zeros(1, device="cuda")
    except Exception:  # no torch, no CUDA: wall-clock timing
        return None

    def clock(step: Callable[[], mx.array], repeats: int) -> float:
        mx.eval(step())  # warm: kernels compile once
        mx.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(repeats):
                mx.eval(step())
            mx.synchronize()
        total = sum(getattr(e, "device_time", 0) or e.cuda_time for e in prof.events() if e.device_type.name == "CUDA")
        return total / repeats / 1e6

    return clock


def wall_clock(step: Callable[[], mx.array], repeats: int) -> float:
    mx.eval(step())
    start = time.perf_counter()
    mx.eval([step() for _ in range(repeats)])
    return (time.perf_counter() - start) / repeats


def measure(name: str, out_f: int, in_f: int, rows: int, bits: int, group: int, repeats: int, clock) -> dict:
    w = mx.random.normal((out_f, in_f), dtype=mx.bfloat16) * 0.02
    wq, scales, biases = mx.quantize(w, group_size=group, bits=bits)
    x = mx.random.normal((rows, in_f), dtype=mx.bfloat16)
    mx.eval(w, wq, scales, biases, x)
    quant_bytes = wq.nbytes + scales.nbytes + biases.nbytes + x.nbytes
    dense_bytes = w.nbytes + x.nbytes

    def mlx_q() -> mx.array:
        return mx.quantized_matmul(x, wq, scales, biases, transpose=True, group_size=group, bits=bits)

    def ours() -> mx.array:
        y = quant_kernels.fast_quantized_matmul(x, wq, scales, biases, group_size=group, bits=bits)
        assert y is not None
        return y

    row = {"layer": name, "rows": rows, "bits": bits, "group_size": group}
    t_q = clock(mlx_q, repeats)
    row |= {"mlx_us": t_q * 1e6, "mlx_gb_s": quant_bytes / t_q / 1e9}
    if quant_kernels.fast_quantized_matmul(x, wq, scales, biases, group_size=group, bits=bits) is not None:
        ref = mlx_q().astype(mx.float32)
        err = mx.abs(ours().astype(mx.float32) - ref).max() / mx.abs(ref).max()
        t_f = clock(ours, repeats)
        row |= {"fast_us": t_f * 1e6, "fast_gb_s": quant_bytes / t_f / 1e9, "speedup": t_q / t_f}
        row["max_rel_err"] = err.item()
    t_d = clock(lambda: x @ w.T, repeats)
    return row | {"bf16_us": t_d * 1e6, "bf16_gb_s": dense_bytes / t_d / 1e9}


def decode(model_dir: Path, prompts: int, tokens: int) -> dict:
    """Greedy decode of `prompts` prompts x `tokens` tokens, one stream, MLX's kernel vs ours."""
    from mlx_lm import load
    from mlx_lm.generate import generate_step

    from mlx_common.flat_decode import flatten_decode

    texts = [
        f"Write about topic number {i}: the {['sea', 'city', 'forest', 'desert'][i % 4]} at dawn."
        for i in range(prompts)
    ]
    outputs: dict[bool, list[list[int]]] = {}
    rates: dict[bool, float] = {}
    for fast in (False, True):
        model, tokenizer = load(str(model_dir))
        flatten_decode(model, fast=fast)
        runs, seconds, count = [], 0.0, 0
        for i, text in enumerate(texts + texts[:1]):  # the first run (compiles) is not timed
            prompt = mx.array(tokenizer.encode(text))
            stamps, out = [], []
            for token, _ in generate_step(prompt, model, max_tokens=tokens):
                out.append(int(token))
                stamps.append(time.perf_counter())
            if i > 0:
                runs.append(out)
                seconds += stamps[-1] - stamps[0]  # decode only: after the first token
                count += len(out) - 1
        outputs[fast], rates[fast] = runs, count / seconds
        del model
    same = sum(a == b for x, y in zip(outputs[False], outputs[True], strict=True) for a, b in zip(x, y, strict=True))
    total = sum(len(x) for x in outputs[False])
    return {
        "model": model_dir.name,
        "prompts": prompts,
        "tokens": tokens,
        "mlx_tok_s": rates[False],
        "fast_tok_s": rates[True],
        "greedy_agreement": same / total,
        "tokens_compared": total,
    }


def fmt(row: dict, key: str, spec: str) -> str:
    return format(row[key], spec) if key in row else "-"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 2, 4, 8, 32])
    parser.add_argument("--bits", type=int, default=4)
    parser.add_argument("--group-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--decode", type=Path, help="a quantized mlx-lm model directory to decode with")
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    clock = gpu_clock()
    timing = "gpu (CUPTI)" if clock else "wall"
    print(
        f"timing: {timing}; FAST_QUANT kernels {'apply' if quant_kernels.cuda_device() else 'do not apply (no CUDA)'}"
    )
    rows = []
    head = ["layer", "rows", "mlx µs", "GB/s", "ours µs", "GB/s", "×", "bf16 µs", "GB/s"]
    print(" ".join(f"{h:<24}" if i == 0 else f"{h:>8}" for i, h in enumerate(head)))
    for name, (out_f, in_f) in SHAPES.items():
        for n in args.rows:
            r = measure(name, out_f, in_f, n, args.bits, args.group_size, args.repeats, clock or wall_clock)
            rows.append(r)
            print(f"{name:<24} {n:>4} {r['mlx_us']:>8.1f} {r['mlx_gb_s']:>6.0f} {fmt(r, 'fast_us', '8.1f'):>8} "
                  f"{fmt(r, 'fast_gb_s', '6.0f'):>6} {fmt(r, 'speedup', '5.2f'):>5} {r['bf16_us']:>8.1f} "
                  f"{r['bf16_gb_s']:>6.0f}", flush=True)  # fmt: skip
    result = {"bench": "kernels", "device_name": device_name(), "timing": timing, "rows": rows}
    if args.decode:
        result["decode"] = d = decode(args.decode, args.prompts, args.tokens)
        print(f"decode {d['model']}: MLX {d['mlx_tok_s']:.1f} tok/s, ours {d['fast_tok_s']:.1f} tok/s; greedy "
              f"agreement {d['greedy_agreement']:.2%} of {d['tokens_compared']} tokens")  # fmt: skip
    write_result(args.out, "kernels", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())

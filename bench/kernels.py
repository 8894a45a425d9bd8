"""Per-layer speed of the quantized matmul that decode runs: MLX's `quantized_matmul` against a
bf16 matmul of the same shape, for the Qwen2.5-7B layer shapes at 1, 8 and 32 rows — the
baseline that custom decode kernels (issue "Faster") are measured against.

    python bench/kernels.py [--rows 1 8 32] [--bits 4] [--group-size 64] [--repeats 200]

Timing: a lone `mx.eval` adds ~35–50 µs on CUDA, so each measurement queues `--repeats` launches
(on distinct inputs, so nothing is elided) and evaluates once; the time per launch is the total
over the repeats. GB/s counts the bytes a launch must read: the weights (packed values, scales
and biases for the quantized kernel) plus the input rows. Prints a table and writes
bench/results/kernels-<time>.json. Meaningful on a GPU; it runs anywhere.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import mlx.core as mx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RESULTS, device_name, write_result

SHAPES = {  # (out features, in features) of Qwen2.5-7B's large layers and its head
    "mlp up/gate 18944x3584": (18944, 3584),
    "mlp down 3584x18944": (3584, 18944),
    "lm head 152064x3584": (152064, 3584),
    "attn o 3584x3584": (3584, 3584),
}


def timed(step, inputs: list[mx.array]) -> float:
    """Seconds per launch of `step` over the queued `inputs` (one evaluation for all)."""
    mx.eval(step(inputs[0]))  # warm: kernels compile once
    start = time.perf_counter()
    mx.eval([step(x) for x in inputs])
    return (time.perf_counter() - start) / len(inputs)


def measure(name: str, out_f: int, in_f: int, rows: int, bits: int, group: int, repeats: int) -> dict:
    w = mx.random.normal((out_f, in_f), dtype=mx.bfloat16) * 0.02
    wq, scales, biases = mx.quantize(w, group_size=group, bits=bits)
    inputs = [mx.random.normal((rows, in_f), dtype=mx.bfloat16) for _ in range(repeats)]
    mx.eval(w, wq, scales, biases, inputs)
    quant_bytes = wq.nbytes + scales.nbytes + biases.nbytes + inputs[0].nbytes
    dense_bytes = w.nbytes + inputs[0].nbytes
    t_q = timed(
        lambda x: mx.quantized_matmul(x, wq, scales, biases, transpose=True, group_size=group, bits=bits), inputs
    )
    t_d = timed(lambda x: x @ w.T, inputs)
    return {
        "layer": name,
        "rows": rows,
        "bits": bits,
        "group_size": group,
        "quantized_us": t_q * 1e6,
        "quantized_gb_s": quant_bytes / t_q / 1e9,
        "bf16_us": t_d * 1e6,
        "bf16_gb_s": dense_bytes / t_d / 1e9,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--bits", type=int, default=4)
    parser.add_argument("--group-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    rows = []
    print(f"{'layer':<24} {'rows':>4} {'q µs':>8} {'q GB/s':>8} {'bf16 µs':>8} {'bf16 GB/s':>10}")
    for name, (out_f, in_f) in SHAPES.items():
        for n in args.rows:
            r = measure(name, out_f, in_f, n, args.bits, args.group_size, args.repeats)
            rows.append(r)
            print(f"{name:<24} {n:>4} {r['quantized_us']:>8.1f} {r['quantized_gb_s']:>8.0f} "
                  f"{r['bf16_us']:>8.1f} {r['bf16_gb_s']:>10.0f}", flush=True)  # fmt: skip
    path = write_result(args.out, "kernels", {"bench": "kernels", "device_name": device_name(), "rows": rows})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

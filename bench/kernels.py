"""Per-layer speed of decode's quantized matmul: MLX's `quantized_matmul`, our CUDA kernels
(mlx_common/quant_kernels.py, FAST_QUANT) and a bf16 matmul of the same shape, for the
Qwen2.5-7B layer shapes at 1, 2, 4, 8 and 32 rows; optionally a 7B decode in-process with and
without our kernels (tokens/s, where a step's time goes, greedy agreement), and through mlx-lm's
BatchGenerator with and without an attention mask on every step.

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


def host_us(step: Callable[[], mx.array], calls: int = 300) -> float:
    """CPU time to add one call to MLX's graph (not evaluated): what each layer costs the host
    before any kernel runs."""
    step()
    start = time.perf_counter()
    for _ in range(calls):
        step()
    return (time.perf_counter() - start) / calls * 1e6


def measure(name: str, out_f: int, in_f: int, rows: int, bits: int, group: int, repeats: int, clock) -> dict:
    w = mx.random.normal((out_f, in_f), dtype=mx.bfloat16) * 0.02
    wq, scales, biases = mx.quantize(w, group_size=group, bits=bits)
    x = mx.random.normal((rows, in_f), dtype=mx.bfloat16)
    mx.eval(w, wq, scales, biases, x)
    quant_bytes = wq.nbytes + scales.nbytes + biases.nbytes + x.nbytes
    dense_bytes = w.nbytes + x.nbytes

    def mlx_q() -> mx.array:
        return mx.quantized_matmul(x, wq, scales, biases, transpose=True, group_size=group, bits=bits)

    def ours_or_none() -> mx.array | None:
        return quant_kernels.fast_quantized_matmul(x, wq, scales, biases, group_size=group, bits=bits, one_row=True)

    def ours() -> mx.array:
        y = ours_or_none()
        assert y is not None
        return y

    row = {"layer": name, "rows": rows, "bits": bits, "group_size": group}
    t_q = clock(mlx_q, repeats)
    row |= {"mlx_us": t_q * 1e6, "mlx_gb_s": quant_bytes / t_q / 1e9, "mlx_host_us": host_us(mlx_q)}
    if ours_or_none() is not None:
        ref = mlx_q().astype(mx.float32)
        err = mx.abs(ours().astype(mx.float32) - ref).max() / mx.abs(ref).max()
        t_f = clock(ours, repeats)
        row |= {"fast_us": t_f * 1e6, "fast_gb_s": quant_bytes / t_f / 1e9, "speedup": t_q / t_f}
        row["fast_host_us"] = host_us(ours)
        row["max_rel_err"] = err.item()
    t_d = clock(lambda: x @ w.T, repeats)
    return row | {"bf16_us": t_d * 1e6, "bf16_gb_s": dense_bytes / t_d / 1e9}


def decode(model_dir: Path, prompts: int, tokens: int, timed: int = 8) -> dict:
    """One stream's greedy decode with MLX's kernel and with ours: tokens/s over `timed`
    prompts, where each step's time goes, and agreement over `prompts` x `tokens`."""
    from mlx_lm import load

    from mlx_common.fused_decode import prepare_decode

    model, tokenizer = load(str(model_dir))
    prepare_decode(model, fast=True)  # packs q/k/v and gate/up, compiles our kernels' variants
    layers = [m for _, m in model.named_modules() if hasattr(m, "fast_quant")]
    texts = [
        f"Write about topic number {i}: the {['sea', 'city', 'forest', 'desert'][i % 4]} at dawn."
        for i in range(prompts)
    ]
    encoded = [tokenizer.encode(text) for text in texts]
    rates: dict[str, float] = {}
    breakdown: dict[str, dict] = {}
    for side, fast in (("mlx", False), ("ours", True)):
        for layer in layers:
            layer.fast_quant = fast
        rates[side] = tokens_per_second(model, encoded[:timed], tokens)
        if profiled := where_time_goes(model, encoded[0], tokens):
            breakdown[side] = profiled
    # Our engine decodes through mlx-lm's BatchGenerator, whose batch cache gave attention a
    # mask on every step (worker_text/batch_cache.py): one stream that way, with and without.
    batch = {unpadded: batch_tokens_per_second(model, encoded[:timed], tokens, unpadded) for unpadded in (False, True)}
    return {
        "model": model_dir.name,
        "prompts_timed": timed,
        "tokens": tokens,
        "mlx_tok_s": rates["mlx"],
        "fast_tok_s": rates["ours"],
        "batch_generator_tok_s": {"mask_every_step": batch[False], "no_mask_unpadded": batch[True]},
        "gpu_time_per_token": breakdown,
        "agreement": agreement(model, layers, encoded, tokens),
    }


def decode_rate(prompts: list[list[int]], stamps_of: Callable[[list[int]], list[float]]) -> float:
    """Tokens/s after each prompt's first token, over all prompts; `stamps_of(prompt)` decodes
    one and gives the time of each token. The first prompt runs once more first, untimed."""
    seconds, count = 0.0, 0
    for i, prompt in enumerate(prompts[:1] + prompts):
        stamps = stamps_of(prompt)
        if i > 0:
            seconds += stamps[-1] - stamps[0]
            count += len(stamps) - 1
    return count / seconds


def tokens_per_second(model, prompts: list[list[int]], tokens: int) -> float:
    from mlx_lm.generate import generate_step

    return decode_rate(
        prompts, lambda prompt: [time.perf_counter() for _ in generate_step(mx.array(prompt), model, max_tokens=tokens)]
    )


def batch_tokens_per_second(model, prompts: list[list[int]], tokens: int, unpadded: bool) -> float:
    """One stream through mlx-lm's BatchGenerator (as our engine runs it), our kernels on."""
    from mlx_lm.generate import BatchGenerator
    from mlx_lm.models import cache

    from worker_text import batch_cache

    def stamps_of(prompt: list[int]) -> list[float]:
        generator = BatchGenerator(model, completion_batch_size=2, prefill_batch_size=1)
        generator.insert([prompt], max_tokens=[tokens])
        stamps: list[float] = []
        while len(stamps) < tokens:
            if generator.next()[1]:
                stamps.append(time.perf_counter())
        generator.close()
        return stamps

    original = cache.BatchKVCache
    # batch_cache.BatchKVCache: mlx-lm's own class, as that module imported it
    cache.BatchKVCache = batch_cache.UnpaddedBatchKVCache if unpadded else batch_cache.BatchKVCache
    try:
        return decode_rate(prompts, stamps_of)
    finally:
        cache.BatchKVCache = original


def agreement(model, layers: list, prompts: list[list[int]], tokens: int) -> dict:
    """Greedy agreement, teacher-forced: MLX's kernel generates each prompt's continuation;
    ours then reads the same tokens one decode step at a time and picks its own next token at
    each. (Comparing two free runs would count every token after the first difference as
    different.) A disagreement is reported with MLX's log-probability margin between the two
    tokens: a tie within 16-bit error is a margin of a few hundredths."""
    from mlx_lm.generate import generate_step
    from mlx_lm.models.cache import make_prompt_cache

    same, total, margins = 0, 0, []
    for prompt in prompts:
        for layer in layers:
            layer.fast_quant = False
        steps = list(generate_step(mx.array(prompt), model, max_tokens=tokens))
        reference = [int(token) for token, _ in steps]
        for layer in layers:
            layer.fast_quant = True
        cache = make_prompt_cache(model)
        picks = [mx.argmax(model(mx.array(prompt)[None], cache=cache)[0, -1])]
        for token in reference[:-1]:
            picks.append(mx.argmax(model(mx.array([[token]]), cache=cache)[0, -1]))
            mx.async_eval(picks[-1])
        ours = mx.stack(picks).tolist()
        for (token, logprobs), pick in zip(steps, ours, strict=True):
            total += 1
            if pick == token:
                same += 1
            else:
                margins.append((logprobs[token] - logprobs[pick]).item())
    return {
        "tokens_compared": total,
        "same": same / total,
        "disagreements": len(margins),
        "margins": sorted(margins),
    }


KERNEL_KINDS = (  # substrings of CUDA kernel names -> what they do in a decode step
    ("fq_", "ours: quantized matvec, q/k/v, SwiGLU"),
    ("qmv", "MLX quantized matvec"),
    ("qmm", "MLX quantized matmul"),
    ("sdpa", "attention"),
    ("attention", "attention"),
    ("gemm", "dense matmul"),
    ("gemv", "dense matmul"),
    ("rms", "norms"),
    ("rope", "rope"),
    ("copy", "copies"),
    ("binary", "elementwise"),
    ("unary", "elementwise"),
    ("fused", "elementwise"),
    ("reduce", "reductions"),
)


def where_time_goes(model, prompt: list[int], tokens: int) -> dict | None:
    """GPU kernel time per decode token by kind (CUPTI), and the wall time per token around it:
    the difference is time the GPU waits for the host (MLX building and launching the step)."""
    try:
        from torch.profiler import ProfilerActivity, profile
    except ImportError:
        return None
    from mlx_lm.generate import generate_step

    steps = generate_step(mx.array(prompt), model, max_tokens=tokens)
    next(steps)  # prefill and the first token: not a decode step
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        start = time.perf_counter()
        count = sum(1 for _ in steps)
        mx.synchronize()
        wall = time.perf_counter() - start
    kinds: dict[str, float] = {}
    launches = 0
    for e in prof.events():
        if e.device_type.name != "CUDA":
            continue
        launches += 1
        kind = next((k for key, k in KERNEL_KINDS if key in e.name.lower()), "other")
        kinds[kind] = kinds.get(kind, 0.0) + (getattr(e, "device_time", 0) or e.cuda_time)
    per = {k: v / count / 1e3 for k, v in sorted(kinds.items(), key=lambda kv: -kv[1])}
    return {
        "wall_ms": wall / count * 1e3,
        "gpu_ms": sum(per.values()),
        "kernels_per_token": launches / count,
        "ms_by_kind": per,
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
    head = ["layer", "rows", "mlx µs", "GB/s", "ours µs", "GB/s", "×", "bf16 µs", "GB/s", "host µs"]
    print(" ".join(f"{h:<24}" if i == 0 else f"{h:>8}" for i, h in enumerate(head)))
    for name, (out_f, in_f) in SHAPES.items():
        for n in args.rows:
            r = measure(name, out_f, in_f, n, args.bits, args.group_size, args.repeats, clock or wall_clock)
            rows.append(r)
            print(f"{name:<24} {n:>4} {r['mlx_us']:>8.1f} {r['mlx_gb_s']:>6.0f} {fmt(r, 'fast_us', '8.1f'):>8} "
                  f"{fmt(r, 'fast_gb_s', '6.0f'):>6} {fmt(r, 'speedup', '5.2f'):>5} {r['bf16_us']:>8.1f} "
                  f"{r['bf16_gb_s']:>6.0f} {r['mlx_host_us']:>5.1f}/{fmt(r, 'fast_host_us', '.1f')}",
                  flush=True)  # fmt: skip
    result = {"bench": "kernels", "device_name": device_name(), "timing": timing, "rows": rows}
    if args.decode:
        result["decode"] = d = decode(args.decode, args.prompts, args.tokens)
        a = d["agreement"]
        print(f"decode {d['model']}: MLX {d['mlx_tok_s']:.1f} tok/s, ours {d['fast_tok_s']:.1f} tok/s; greedy "
              f"agreement {a['same']:.2%} of {a['tokens_compared']} tokens (teacher-forced); MLX's margins where "
              f"they differ: {', '.join(f'{m:.3f}' for m in a['margins']) or 'none'}")  # fmt: skip
        b = d["batch_generator_tok_s"]
        print(f"  through BatchGenerator (our engine's path), as shipped: {b['no_mask_unpadded']:.1f} tok/s; "
              f"with a mask on every step: {b['mask_every_step']:.1f}")  # fmt: skip
        for side, b in d["gpu_time_per_token"].items():
            kinds = ", ".join(f"{k} {v:.2f}" for k, v in b["ms_by_kind"].items())
            print(f"  {side}: {b['wall_ms']:.2f} ms/token wall (profiled), {b['gpu_ms']:.2f} ms of GPU kernels "
                  f"({b['kernels_per_token']:.0f} launches): {kinds}")  # fmt: skip
    write_result(args.out, "kernels", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())

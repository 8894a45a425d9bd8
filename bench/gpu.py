"""Decode speed on a GPU for real model shapes: our engine in-process, our whole stack, and
stock `mlx_lm.server`, side by side in one run, at 1/8/32/64 concurrent streams.

    python bench/gpu.py [--shapes qwen2.5-0.5b qwen2.5-7b] [--formats 4bit bf16] \
                        [--levels 1 8 32 64] [--max-tokens 128] [--out bench/results]

Models are random-weight Qwen2.5 shapes (worker_text/tiny.py `build_shaped`, built once under
--models-dir): every step costs what the real model's does. For each model and level:
(a) `in-process`: our `TextEngine` driven directly (a child process, so its memory is gone
before the servers load), (b) `stack`: HTTP → gunicorn → Redis queue → our worker → Redis
Stream → SSE, (c) `mlx_lm.server`, the same prompts over HTTP. Each level starts with an
unmeasured round on each side (CUDA compiles a kernel per new shape). Every stream decodes
greedily to exactly --max-tokens (end tokens cannot be sampled by these models).

Each row carries the weight-bandwidth ceiling: concurrency × memory bandwidth / weight bytes,
the rate at which reading the weights once per step would allow (the KV cache is ignored).
Rows go to bench/results/gpu-<shape>-<format>-<time>.json with `concurrency` and
`vs_mlx_lm_server`. See docs/PERFORMANCE.md.

In the same run, under other model names (queues of their own): `--without-fast-quant` adds a
worker on MLX's quantized kernels (`stack FAST_QUANT=0`), `--gpus N` N workers pinned one per
GPU behind one queue (`stack N GPUs`; the `stack` row is one worker).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RESULTS, ROOT, bench_stack, device_name, write_result
from concurrency import TOPICS, compare_levels, decode_rate, start_mlx_lm_server, summarize

from contract.settings import Settings
from runtime.cli import apply_mlx_settings
from tests.support import alias

BASE = {
    "model_type": "qwen2",
    "rms_norm_eps": 1e-6,
    "rope_theta": 1000000.0,
    "max_position_embeddings": 32768,
    "hidden_act": "silu",
}
SHAPES = {  # the published Qwen2.5 configs, trimmed to what mlx-lm reads
    "qwen2.5-0.5b": {
        **BASE,
        "hidden_size": 896,
        "intermediate_size": 4864,
        "num_hidden_layers": 24,
        "num_attention_heads": 14,
        "num_key_value_heads": 2,
        "vocab_size": 151936,
        "tie_word_embeddings": True,
    },
    "qwen2.5-7b": {
        **BASE,
        "hidden_size": 3584,
        "intermediate_size": 18944,
        "num_hidden_layers": 28,
        "num_attention_heads": 28,
        "num_key_value_heads": 4,
        "vocab_size": 152064,
        "tie_word_embeddings": False,
    },
    # Not a real model: a seconds-long smoke test of this script on any machine.
    "smoke": {
        **BASE,
        "hidden_size": 128,
        "intermediate_size": 256,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "vocab_size": 151936,
        "tie_word_embeddings": True,
    },
}
FORMATS = {"4bit": 4, "bf16": None}
BANDWIDTH = {
    "H200": 4.8e12,
    "H100 NVL": 3.9e12,
    "H100 PCIe": 2.0e12,
    "H100": 3.35e12,
    "A100-SXM4-80GB": 2.04e12,
    "A100": 1.55e12,
    "L40S": 0.864e12,
}
"""Memory bandwidth in bytes/s by card name (the vendors' data sheets); first match wins."""


def prompt(round_no: int, i: int) -> str:
    return f"Request {round_no}-{i}: tell me a story about {TOPICS[i % len(TOPICS)]}."


def in_process(model_dir: Path, levels: list[int], max_tokens: int, rounds: int) -> list[dict]:
    """Our engine without the network: jobs added at once, stepped until all are done."""
    from contract.payloads import ChatJob, ChatMessage, SamplingParams
    from contract.settings import Settings
    from worker_text.engine import TextEngine
    from worker_text.loading import load_text_model

    text_model = load_text_model(model_dir.name, Settings(models_dir=str(model_dir.parent)))
    engine = TextEngine(text_model, capacity=max(levels), prompt_cache_bytes=0)

    def one_round(clients: int, tokens: int, round_no: int) -> dict:
        stamps: dict[str, list[float]] = {}
        done: dict[str, dict] = {}
        start = time.perf_counter()
        for i in range(clients):
            job = ChatJob(
                model=model_dir.name,
                max_tokens=tokens,
                sampling=SamplingParams(temperature=0),
                messages=[ChatMessage(role="user", content=prompt(round_no, i))],
            )
            engine.add(f"{round_no}-{i}", job)
            stamps[f"{round_no}-{i}"] = []
        while len(done) < clients:
            events, finished = engine.step()
            now = time.perf_counter()
            for job_id, kind, _ in events:
                if kind == "delta":
                    stamps[job_id].append(now)
            done.update(finished)
        wall = time.perf_counter() - start
        counts = {j: u["completion_tokens"] for j, u in done.items()}
        return {
            "tokens": sum(counts.values()),
            "wall_s": wall,
            "ttfts": [s[0] - start for s in stamps.values() if s],
            "gaps": [b - a for s in stamps.values() for a, b in zip(s, s[1:], strict=False)],
            "decode_rates": [decode_rate(counts[j], s) for j, s in stamps.items() if len(s) > 1],
            "errors": [],
        }

    rows = []
    for clients in levels:
        one_round(clients, 16, round_no=clients * 100 + 99)  # unmeasured: kernel compiles
        runs = [one_round(clients, max_tokens, round_no=clients * 100 + r) for r in range(rounds)]
        rows.append({"server": "in-process", "concurrency": clients, **summarize(runs)})
    return rows


def measure_model(args, name: str, config: dict, bits: int | None) -> list[dict]:
    model_dir = args.models_dir / name
    child = [
        sys.executable,
        __file__,
        "--child",
        name,
        "--levels",
        *map(str, args.levels),
        "--max-tokens",
        str(args.max_tokens),
        "--rounds",
        str(args.rounds),
        "--models-dir",
        str(args.models_dir),
    ]
    # A child builds the model if needed and measures in-process; its GPU memory is freed on exit.
    out = subprocess.run(
        child, check=True, stdout=subprocess.PIPE, text=True, input=json.dumps({"config": config, "bits": bits})
    ).stdout
    rows = json.loads(out.strip().splitlines()[-1])
    capacity = max(args.levels)
    with bench_stack(models_dir=str(args.models_dir)) as (stack, url, _env):
        stack.start_worker(name, WORKER_CAPACITY=capacity)
        servers = {"stack": (url, name)}
        # Other workers of the same weights under other names (own queues), measured in the
        # same run: MLX's kernel alone, and one worker per GPU behind one queue.
        if args.without_fast_quant:
            plain = alias(args.models_dir, f"{name}-mlx-kernels", name)
            stack.start_worker(plain, WORKER_CAPACITY=capacity, FAST_QUANT="0")
            servers["stack FAST_QUANT=0"] = (url, plain)
        if args.gpus > 1:
            spread = alias(args.models_dir, f"{name}-x{args.gpus}", name)
            for gpu in range(args.gpus):
                pinned = {"CUDA_VISIBLE_DEVICES": str(gpu), "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}
                stack.start_worker(spread, WORKER_CAPACITY=capacity, **pinned)
            servers[f"stack {args.gpus} GPUs"] = (url, spread)
        reference, ref_url = start_mlx_lm_server(model_dir, capacity, stack.logs / "mlx_lm_server.log")
        servers["mlx_lm.server"] = (ref_url, "default_model")
        try:
            rows += compare_levels(servers, args.levels, args.rounds, args.max_tokens)
        finally:
            reference.terminate()
            reference.wait(60)
    return rows


def annotate(rows: list[dict], weight_bytes: int, bandwidth: float | None) -> None:
    for row in rows:
        ref = next(r for r in rows if r["server"] == "mlx_lm.server" and r["concurrency"] == row["concurrency"])
        row["vs_mlx_lm_server"] = row["aggregate_tok_s"] / ref["aggregate_tok_s"]
        row["bandwidth_ceiling_tok_s"] = row["concurrency"] * bandwidth / weight_bytes if bandwidth else None


def card_bandwidth(device: str) -> float | None:
    return next((bw for card, bw in BANDWIDTH.items() if card in device), None)


def report(name: str, rows: list[dict], weight_bytes: int, device: str, args) -> None:
    print(f"\n{name}: {weight_bytes / 1e9:.2f} GB of weights, {args.max_tokens} tokens per stream, greedy, on {device}")
    print(
        f"{'server':<20} {'streams':>7} {'agg tok/s':>10} {'stream dec':>10} {'TTFT p50':>9} "
        f"{'ceiling':>8} {'of ceil':>7} {'vs mlx_lm':>9}"
    )
    for row in rows:
        ceiling = row["bandwidth_ceiling_tok_s"]
        print(
            f"{row['server']:<20} {row['concurrency']:>7} {row['aggregate_tok_s']:>10.1f} "
            f"{row['stream_decode_tok_s'] or 0:>10.1f} {row['ttft_ms_p50']:>7.0f}ms "
            f"{ceiling or 0:>8.0f} {row['aggregate_tok_s'] / ceiling if ceiling else 0:>6.0%} "
            f"{row['vs_mlx_lm_server']:>9.2f}"
            + (f"  {row['failed_requests']} failed: {row['first_error']}" if row["failed_requests"] else "")
        )
    single = {r["server"]: r["stream_decode_tok_s"] for r in rows if r["concurrency"] == 1}
    if "stack" in single and "in-process" in single:
        print(f"single-stream decode, stack / in-process: {single['stack'] / single['in-process']:.3f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shapes", nargs="+", default=["qwen2.5-0.5b", "qwen2.5-7b"], choices=list(SHAPES))
    parser.add_argument("--formats", nargs="+", default=list(FORMATS), choices=list(FORMATS))
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 8, 32, 64])
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=1, help="measured rounds per level and side")
    parser.add_argument("--models-dir", type=Path, default=ROOT / "var" / "models" / "bench")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--label", default="", help="added to the result file's name")
    parser.add_argument(
        "--without-fast-quant", action="store_true", help="also a worker with FAST_QUANT=0 (MLX's quantized kernels)"
    )
    parser.add_argument("--gpus", type=int, default=1, help="also N workers pinned one per GPU, behind one queue")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child_main(args)
    device = device_name()
    for shape in args.shapes:
        for fmt in args.formats:
            name = f"{shape}-{fmt}"
            rows = measure_model(args, name, SHAPES[shape], FORMATS[fmt])
            weight_bytes = sum(p.stat().st_size for p in (args.models_dir / name).glob("*.safetensors"))
            order = ["in-process", "stack", "mlx_lm.server"]  # our other workers between the last two
            rows.sort(key=lambda r: (r["concurrency"], order.index(r["server"]) if r["server"] in order else 1.5))
            annotate(rows, weight_bytes, card_bandwidth(device))
            report(name, rows, weight_bytes, device, args)
            write_result(
                args.out,
                f"gpu-{name}{args.label}",
                {
                    "bench": "gpu",
                    "model": name,
                    "config": SHAPES[shape],
                    "bits": FORMATS[fmt],
                    "weight_bytes": weight_bytes,
                    "bandwidth_bytes_s": card_bandwidth(device),
                    "max_tokens": args.max_tokens,
                    "rounds": args.rounds,
                    "rows": rows,
                    "flat_decode": Settings().flat_decode,
                },
            )
    return 0


def child_main(args) -> int:
    """Build the model if needed, measure in-process, print the rows as JSON on stdout."""
    apply_mlx_settings(Settings(), os.environ)  # MLX as a worker runs it (cuDNN attention off)
    spec = json.loads(sys.stdin.read())
    model_dir = args.models_dir / args.child
    if not (model_dir / "config.json").is_file():
        from worker_text.tiny import build_shaped

        started = time.perf_counter()
        build_shaped(model_dir, spec["config"], bits=spec["bits"])
        print(f"built {model_dir} in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    rows = in_process(model_dir, args.levels, args.max_tokens, args.rounds)
    print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())

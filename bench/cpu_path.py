"""The text worker's CPU path, old against new, through the whole stack on a Linux CPU: MLX's
reference BLAS and the quantized weights (`CPU_BLAS=off CPU_DEQUANTIZE_MAX_GB=0`) against
OpenBLAS preloaded and float32 weights (the defaults; mlx_common/cpu_blas.py, cpu_weights.py).

    .venv/bin/python bench/cpu_path.py [--model SmolLM2-135M-Instruct] [--configs old new]
        [--workers 1] [--clients 8] [--max-tokens 64] [--agree-prompts 32] [--agree-tokens 128]

Per configuration, one worker (or `--workers` of them, all serving the model) started the
normal way: time to first token of a ~40-token prompt (streamed, p50 of `--ttft-runs`),
single-stream decode tokens/s, and `--clients` concurrent clients' aggregate tokens/s (completion
tokens / wall time of the round, prefill included). Every request has a prompt of its own and the
prompt caches are off (PROMPT_CACHE_BYTES=0, PROMPT_CACHE_DISK_GB=0), so every prefill is whole.
Then, in a process of its own with OpenBLAS preloaded, greedy agreement of the quantized and the
dequantized model over `--agree-prompts` chat prompts × `--agree-tokens` tokens (batched with
mlx-lm's batch_generate; the quantized side runs at ~10 tokens/s, hence minutes).
Prints a table and writes bench/results/cpu-path-<model>-<time>.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RESULTS, ROOT, bench_stack, write_result
from concurrency import TOPICS, percentile, run_level, story

CONFIGS = {
    "old": {"CPU_BLAS": "off", "CPU_DEQUANTIZE_MAX_GB": "0"},
    "new": {"CPU_BLAS": "auto", "CPU_DEQUANTIZE_MAX_GB": "2"},
    "new-1thread": {"CPU_BLAS": "auto", "CPU_DEQUANTIZE_MAX_GB": "2", "OPENBLAS_NUM_THREADS": "1"},
    "new-2threads": {"CPU_BLAS": "auto", "CPU_DEQUANTIZE_MAX_GB": "2", "OPENBLAS_NUM_THREADS": "2"},
}
"""Worker settings of each configuration; `new` leaves OPENBLAS_NUM_THREADS to the worker."""
NO_PROMPT_CACHE = {"PROMPT_CACHE_BYTES": "0", "PROMPT_CACHE_DISK_GB": "0"}


def measure(stack, url: str, model: str, env: dict, args) -> dict:
    procs = [stack.start_worker(model, **env, **NO_PROMPT_CACHE) for _ in range(args.workers)]
    try:
        log = procs[0].log_path.read_text(errors="replace")
        said = [line.split(": ", 2)[-1] for line in log.splitlines() if "CPU BLAS:" in line or "CPU: " in line]
        warm = run_level(url, model, 1, 4, round_no=-1)  # warm-up, not counted
        prompt_len = prompt_tokens(url, model)
        ttft = [run_level(url, model, 1, 2, round_no=1000 + i)["ttfts"][0] for i in range(args.ttft_runs)]
        single = [run_level(url, model, 1, args.max_tokens, round_no=2000 + i) for i in range(args.rounds)]
        many = [run_level(url, model, args.clients, args.max_tokens, round_no=3000 + i) for i in range(args.rounds)]
    finally:
        for proc in procs:
            proc.stop()
    loaded = [r for r in many if not r["errors"]]
    ttfts_loaded = sorted(t for r in many for t in r["ttfts"])
    return {
        "worker_log": said,
        "ttft_prompt_tokens": prompt_len,
        "warm_up_errors": warm["errors"],
        "ttft_s": ttft,
        "ttft_s_p50": statistics.median(ttft),
        "single_decode_tok_s": statistics.mean(x for r in single for x in r["decode_rates"]),
        "single_tok_s": sum(r["tokens"] for r in single) / sum(r["wall_s"] for r in single),
        "clients_agg_tok_s": sum(r["tokens"] for r in loaded) / sum(r["wall_s"] for r in loaded) if loaded else None,
        "clients_tokens": sum(r["tokens"] for r in many),
        "clients_ttft_s_p50": statistics.median(ttfts_loaded) if ttfts_loaded else None,
        "clients_ttft_s_p95": percentile(ttfts_loaded, 95) if ttfts_loaded else None,
        "clients_itl_ms_p50": 1000 * statistics.median(g for r in many for g in r["gaps"]),
        "failed_requests": sum(len(r["errors"]) for r in [*single, *many]),
    }


def prompt_tokens(url: str, model: str) -> int:
    """How many tokens the TTFT prompt is, template included (one request's usage)."""
    import requests

    body = {"model": model, "messages": story(999, 0), "max_tokens": 1, "temperature": 0}
    return requests.post(url + "/v1/chat/completions", json=body, timeout=600).json()["usage"]["prompt_tokens"]


def agreement(model_dir: Path, prompts: int, tokens: int) -> dict:
    """Greedy continuations of the quantized model and of its float32 dequantization."""
    import mlx.core as mx
    from mlx_lm import load
    from mlx_lm.generate import batch_generate

    from mlx_common.cpu_blas import blas_in_use
    from worker_text.cpu_weights import dequantize_for_cpu

    forms = ["Tell me about {}.", "Write two sentences about {}."]
    questions = [form.format(topic) for form in forms for topic in TOPICS][:prompts]
    quantized, tokenizer = load(str(model_dir))
    dequantized, _ = load(str(model_dir))
    assert dequantize_for_cpu(dequantized, 1000) is not None, "the model is not quantized"
    ids = [
        tokenizer.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True) for q in questions
    ]
    runs, seconds = {}, {}
    for name, model in (("dequantized", dequantized), ("quantized", quantized)):
        start = time.perf_counter()
        runs[name] = batch_generate(model, tokenizer, ids, max_tokens=tokens, return_token_ids=True).token_ids
        seconds[name] = time.perf_counter() - start
    same_first = identical = teacher_same = teacher_positions = 0
    prefix = []
    for prompt, a, b in zip(ids, runs["quantized"], runs["dequantized"], strict=True):
        agree = next((k for k in range(min(len(a), len(b))) if a[k] != b[k]), min(len(a), len(b)))
        prefix.append(agree / max(len(a), len(b), 1))
        same_first += bool(a and b and a[0] == b[0])
        identical += a == b
        # The dequantized model's next token at every position of the quantized model's own
        # text (its greedy picks): agreement that one flipped tie does not end.
        logits = dequantized(mx.array([prompt + a]))[0, len(prompt) - 1 : -1]
        teacher_same += int((mx.argmax(logits, axis=-1) == mx.array(a)).sum().item()) if a else 0
        teacher_positions += len(a)
    return {
        "prompts": prompts,
        "max_tokens": tokens,
        "blas": blas_in_use() or "reference",
        "generated_tokens": {k: sum(map(len, v)) for k, v in runs.items()},
        "seconds": seconds,
        "first_token_same": same_first / prompts,
        "identical_continuations": identical / prompts,
        "mean_share_before_first_difference": statistics.mean(prefix),
        "teacher_forced_next_token_same": teacher_same / max(teacher_positions, 1),
    }


def run_agreement(model_dir: Path, args) -> dict:
    """`agreement` in a child process with OpenBLAS preloaded (as a worker has it), without
    preloading it into this process, whose environment the stack's processes inherit."""
    import os

    from contract.settings import Settings
    from mlx_common.cpu_blas import find_blas, preload_env

    lib = find_blas(Settings().cpu_blas)
    env = preload_env(os.environ, lib) if lib is not None else dict(os.environ)
    argv = [sys.executable, __file__, "--agreement-only", str(model_dir)]
    argv += ["--agree-prompts", str(args.agree_prompts), "--agree-tokens", str(args.agree_tokens)]
    out = subprocess.run(argv, env=env, cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def report(args, rows: dict, agree: dict | None) -> None:
    prompt_len = next(iter(rows.values()))["ttft_prompt_tokens"]
    print(f"\nmodel {args.model}; TTFT prompt {prompt_len} tokens (p50 of {args.ttft_runs}); {args.max_tokens} "
          f"tokens per request; {args.clients} clients; {args.workers} worker(s); {args.rounds} rounds")  # fmt: skip
    base = rows.get("old")
    print(f"{'config':<13} {'TTFT p50':>9} {'1-stream decode':>16} {f'{args.clients}-client agg':>15} "
          f"{'vs old':>7} {'TTFT p50 loaded':>16} {'ITL p50':>8}")  # fmt: skip
    for name, row in rows.items():
        agg = row["clients_agg_tok_s"]
        ratio = f"{agg / base['clients_agg_tok_s']:.2f}x" if base and agg and base["clients_agg_tok_s"] else "-"
        row["clients_agg_vs_old"] = agg / base["clients_agg_tok_s"] if base and agg else None
        print(f"{name:<13} {row['ttft_s_p50']:>8.2f}s {row['single_decode_tok_s']:>10.1f} tok/s "
              f"{agg or 0:>9.1f} tok/s {ratio:>7} {row['clients_ttft_s_p50'] or 0:>15.2f}s "
              f"{row['clients_itl_ms_p50']:>6.0f}ms")  # fmt: skip
    for name, row in rows.items():
        print(f"  {name}: " + " | ".join(row["worker_log"]))
    if agree:
        print(f"greedy agreement, quantized vs dequantized ({agree['prompts']} prompts x {agree['max_tokens']} tokens, "
              f"{agree['blas']}): first token {agree['first_token_same']:.1%}, identical continuations "
              f"{agree['identical_continuations']:.1%}, share before the first difference "
              f"{agree['mean_share_before_first_difference']:.1%}, next token on the quantized text "
              f"{agree['teacher_forced_next_token_same']:.1%}")  # fmt: skip
    name = f"cpu-path-{args.model.replace('/', '_')}"
    write_result(args.out, name, {"bench": "cpu_path", "args": vars(args) | {"out": str(args.out)},
                                  "rows": rows, "agreement": agree})  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="SmolLM2-135M-Instruct")
    parser.add_argument("--configs", nargs="+", default=["old", "new"], choices=sorted(CONFIGS))
    parser.add_argument("--workers", type=int, default=1, help="text workers serving the model at once")
    parser.add_argument("--ttft-runs", type=int, default=5)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2, help="rounds of the single-stream and many-client runs")
    parser.add_argument("--agree-prompts", type=int, default=32, help="0: no agreement run")
    parser.add_argument("--agree-tokens", type=int, default=128)
    parser.add_argument("--agreement-only", type=Path, metavar="MODEL_DIR", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.agreement_only:
        print(json.dumps(agreement(args.agreement_only, args.agree_prompts, args.agree_tokens)))
        return 0

    from contract.modelref import parse_model_ref
    from contract.settings import Settings

    rows: dict[str, dict] = {}
    with bench_stack() as (stack, url, env):
        model_dir = parse_model_ref(args.model, Settings(models_dir=env["MODELS_DIR"]).model_roots).local_path
        for name in args.configs:
            print(f"{name}: {CONFIGS[name]}", flush=True)
            rows[name] = measure(stack, url, args.model, CONFIGS[name], args)
            print(f"  {json.dumps({k: v for k, v in rows[name].items() if k != 'worker_log'})}", flush=True)
    agree = run_agreement(model_dir, args) if args.agree_prompts else None
    report(args, rows, agree)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Many clients, one worker: aggregate tokens/s, time-to-first-token and inter-token latency
at 1, 4, 8 and 16 concurrent streaming clients, through our whole stack and through stock
`mlx_lm.server` on the same model, prompts and machine, interleaved level by level in one run.

    .venv/bin/python bench/concurrency.py [--model tiny-text] [--levels 1 4 8 16] [--max-tokens 64]

Every request has a prompt of its own (so no prompt cache helps either side) and decodes
greedily. Each level starts with an unmeasured round on each server (kernel compilation on
CUDA). Tokens are counted from each stream's usage. Prints a table and writes
bench/results/concurrency-<model>-<time>.json.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RESULTS, bench_stack, device_name, sse_chunks, write_result

from tests.support import free_port, wait_until

TOPICS = [
    "a lighthouse keeper",
    "a storm at sea",
    "a city at night",
    "a mountain village",
    "a old library",
    "a train journey",
    "a garden in spring",
    "a clockmaker",
    "a desert crossing",
    "a river town",
    "a snowed-in cabin",
    "a market day",
    "a space station",
    "a fishing boat",
    "a quiet museum",
    "a summer festival",
]


def one_stream(url: str, model: str, messages: list, max_tokens: int, out: list, start_gate: threading.Barrier):
    body = {
        "model": model,
        "messages": messages,
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    session = requests.Session()
    start_gate.wait()
    start = time.perf_counter()
    stamps, tokens, error = [], None, None
    try:
        with session.post(url + "/v1/chat/completions", json=body, stream=True, timeout=3600) as response:
            response.raise_for_status()
            for chunk in sse_chunks(response):
                if chunk.get("usage"):
                    tokens = chunk["usage"]["completion_tokens"]
                if chunk.get("choices") and chunk["choices"][0].get("delta", {}).get("content"):
                    stamps.append(time.perf_counter())
    except requests.RequestException as exc:  # counted, not hidden: a server that drops requests
        error = f"{type(exc).__name__}: {exc}"
    out.append(
        {
            "start": start,
            "stamps": stamps,
            "end": time.perf_counter(),
            "error": error,
            "tokens": tokens if tokens is not None else len(stamps),
        }
    )


def story(round_no: int, i: int) -> list[dict]:
    """Client i's request in a round: a prompt of its own, so no prompt cache helps."""
    return [{"role": "user", "content": f"Request {round_no}-{i}: tell me a story about {TOPICS[i % len(TOPICS)]}."}]


def run_level(url: str, model: str, clients: int, max_tokens: int, round_no: int, messages=story) -> dict:
    results: list[dict] = []
    gate = threading.Barrier(clients)
    threads = [
        threading.Thread(
            target=one_stream,
            args=(url, model, messages(round_no, i), max_tokens, results, gate),
        )
        for i in range(clients)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = max(r["end"] for r in results) - min(r["start"] for r in results)
    ttfts = [r["stamps"][0] - r["start"] for r in results if r["stamps"]]
    gaps = [b - a for r in results for a, b in zip(r["stamps"], r["stamps"][1:], strict=False)]
    return {
        "tokens": sum(r["tokens"] for r in results),
        "wall_s": wall,
        "ttfts": ttfts,
        "gaps": gaps,
        "decode_rates": [decode_rate(r["tokens"], r["stamps"]) for r in results if len(r["stamps"]) > 1],
        "errors": [r["error"] for r in results if r["error"]],
    }


def decode_rate(tokens: int, stamps: list[float]) -> float:
    """One stream's decode tokens/s: from its first token to its last (prefill excluded)."""
    return (tokens - 1) / (stamps[-1] - stamps[0])


def summarize(runs: list[dict]) -> dict:
    ttfts = sorted(t for r in runs for t in r["ttfts"])
    gaps = sorted(g for r in runs for g in r["gaps"])
    rates = [x for r in runs for x in r["decode_rates"]]
    tokens, wall = sum(r["tokens"] for r in runs), sum(r["wall_s"] for r in runs)
    errors = [e for r in runs for e in r.get("errors", [])]
    return {
        "aggregate_tok_s": tokens / wall,
        "tokens": tokens,
        "wall_s": wall,
        "ttft_ms_p50": 1000 * statistics.median(ttfts) if ttfts else None,
        "ttft_ms_p95": 1000 * percentile(ttfts, 95) if ttfts else None,
        "itl_ms_p50": 1000 * statistics.median(gaps) if gaps else None,
        "itl_ms_p95": 1000 * percentile(gaps, 95) if gaps else None,
        "stream_decode_tok_s": statistics.mean(rates) if rates else None,
        "failed_requests": len(errors),
        "first_error": errors[0] if errors else None,
    }


def percentile(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(p / 100 * (len(values) - 1)))]


def compare_levels(
    servers: dict[str, tuple[str, str]], levels: list[int], rounds: int, max_tokens: int, messages=story
) -> list[dict]:
    """Every level on every server (name → (url, model)), rounds interleaved; one row each.
    `messages(round, client)`: each request's messages."""
    rows = []
    for clients in levels:
        runs: dict[str, list] = {name: [] for name in servers}
        # An unmeasured round per level and server first: on CUDA each new batch shape
        # compiles kernels on first use (tens of seconds, then cached on disk, where the
        # other server would find them), which must not land on whichever runs first.
        for server_url, model in servers.values():
            run_level(server_url, model, clients, 16, round_no=clients * 100 + 99, messages=messages)
        for round_no in range(rounds):
            for name, (server_url, model) in servers.items():
                runs[name].append(
                    run_level(server_url, model, clients, max_tokens, clients * 100 + round_no, messages=messages)
                )
        rows += [{"server": name, "concurrency": clients, **summarize(runs[name])} for name in servers]
    return rows


def start_peer(
    argv: list[str], log: Path, name: str, probe: str, timeout: float, **popen
) -> tuple[subprocess.Popen, str]:
    """A peer server (`argv` + `--port P`), logging to `log`, once `GET probe` answers 200."""
    port = free_port()
    proc = subprocess.Popen([*argv, "--port", str(port)], stdout=log.open("w"), stderr=subprocess.STDOUT, **popen)
    url = f"http://127.0.0.1:{port}"

    def answers():
        try:
            return requests.get(url + probe, timeout=1).ok
        except requests.RequestException:
            return False

    wait_until(answers, timeout, name)
    return proc, url


def start_mlx_lm_server(model_dir: Path, capacity: int, log: Path) -> tuple[subprocess.Popen, str]:
    argv = [sys.executable, "-m", "mlx_lm.server", "--model", str(model_dir)]
    argv += ["--decode-concurrency", str(2 * capacity), "--prompt-concurrency", str(capacity)]
    return start_peer(argv, log, "mlx_lm.server", "/v1/models", 120)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="tiny-text")
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 4, 8, 16])
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2, help="rounds per level and server")
    parser.add_argument("--capacity", type=int, default=16, help="our worker's --capacity")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    from contract.modelref import parse_model_ref
    from contract.settings import Settings

    with bench_stack() as (stack, url, env):
        model_dir = parse_model_ref(args.model, Settings(models_dir=env["MODELS_DIR"]).model_roots).local_path
        stack.start_worker(args.model, WORKER_CAPACITY=args.capacity)
        reference, ref_url = start_mlx_lm_server(model_dir, args.capacity, stack.logs / "mlx_lm_server.log")
        servers = {"ours": (url, args.model), "mlx_lm.server": (ref_url, "default_model")}
        try:
            for server_url, model in servers.values():  # warm-up, not counted
                run_level(server_url, model, 2, 8, round_no=-1)
            rows = compare_levels(servers, args.levels, args.rounds, args.max_tokens)
        finally:
            reference.terminate()
            reference.wait(30)
    report(args, rows)
    return 0


def report(args, rows: list[dict]) -> None:
    device = device_name()
    single = next(r["aggregate_tok_s"] for r in rows if r["server"] == "ours" and r["concurrency"] == min(args.levels))
    print(f"\nmodel {args.model}, {args.max_tokens} tokens per request, greedy, {args.rounds} rounds, on {device}")
    print(
        f"{'server':<14} {'clients':>7} {'agg tok/s':>10} {'TTFT p50':>9} {'TTFT p95':>9} "
        f"{'ITL p50':>8} {'ITL p95':>8} {'ours/ref':>8}"
    )
    for row in rows:
        ref = next(r for r in rows if r["server"] == "mlx_lm.server" and r["concurrency"] == row["concurrency"])
        row["vs_mlx_lm_server"] = row["aggregate_tok_s"] / ref["aggregate_tok_s"]
        row["vs_own_single_stream"] = row["aggregate_tok_s"] / single if row["server"] == "ours" else None
        print(
            f"{row['server']:<14} {row['concurrency']:>7} {row['aggregate_tok_s']:>10.1f} "
            f"{row['ttft_ms_p50']:>8.0f}ms {row['ttft_ms_p95']:>7.0f}ms {row['itl_ms_p50'] or 0:>6.1f}ms "
            f"{row['itl_ms_p95'] or 0:>6.1f}ms {row['vs_mlx_lm_server']:>8.2f}"
        )
    write_result(
        args.out,
        f"concurrency-{args.model.replace('/', '_')}",
        {
            "bench": "concurrency",
            "model": args.model,
            "max_tokens": args.max_tokens,
            "rounds": args.rounds,
            "capacity": args.capacity,
            "rows": rows,
        },
    )


if __name__ == "__main__":
    sys.exit(main())

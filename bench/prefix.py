"""Memory and caches (issue 19): the prompt cache on disk across a worker restart, and memory-aware
admission on a small budget, through the whole stack, side by side in one run.

    .venv/bin/python bench/prefix.py [--model tiny-prefix] [--prefix-tokens 4096] [--requests 32]

(a) restart: a long shared system prompt (~`--prefix-tokens` tokens); a first request fills the
    caches; the worker restarts (its RAM cache is gone); a request with the same system prompt
    and another question: its time to first token with the disk cache (PROMPT_CACHE_DISK_GB > 0)
    and without (= 0), against the cold first request's.
(b) routing: two workers, `--conversations` conversations of `--turns` turns at once, each with
    its own long system prompt: time to first token of the later turns (p50, p95) and their mean
    `cached_tokens`, through an API that routes by prefix and one that does not.
(c) memory: `--requests` long requests at once on a worker whose budget fits a few of them
    (WORKER_MEMORY_GB), with admission control and without it (the budget set to MLX's whole
    limit): peak memory (MLX's, from /admin/status), completions, wall time.

The default model is tiny-text widened (hidden 256, 4 layers, 8k context; built when missing)
so a 4k-token prefill costs seconds on a CPU: enough to measure, quick to run. Prints a table
and writes bench/results/prefix-<model>-<time>.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RESULTS, ROOT, bench_stack, device_name, sse_lines, write_result

WORDS = ["the", "quick", "brown", "fox", "jumps", "over", "the", "lazy", "dog"]
"""Words of the tiny models' tokenizer corpus: about one token each for them."""


def system_prompt(tokens: int) -> str:
    """About `tokens` tokens of system prompt for the tiny tokenizer (about a token a word)."""
    return "You are an agent. " + " ".join(WORDS[i % len(WORDS)] for i in range(tokens))


def ttft(url: str, model: str, messages: list[dict], max_tokens: int = 4, with_text: bool = False):
    """Seconds to the first streamed token, and the prompt's cached tokens (from the usage);
    with `with_text`, the answer's text too."""
    body = {"model": model, "messages": messages, "max_tokens": max_tokens, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}  # fmt: skip
    start, first, cached, text = time.perf_counter(), None, 0, []
    with requests.post(url + "/v1/chat/completions", json=body, stream=True, timeout=1800) as response:
        response.raise_for_status()
        for line in sse_lines(response):
            # The first token: a chunk with text, or the finish (a random model's first tokens
            # may be invisible); the role chunk comes before any prefill and does not count.
            token = (b'"content":"' in line and b'"content":""' not in line) or b'"finish_reason":"' in line
            if first is None and line.startswith(b"data: {") and token:
                first = time.perf_counter() - start
            if line.startswith(b"data: {") and b'"content":"' in line:
                chunk = json.loads(line[6:])
                text += [c["delta"].get("content") or "" for c in chunk.get("choices", [])]
            if line.startswith(b"data: {") and b'"usage":{' in line:
                details = json.loads(line[6:])["usage"].get("prompt_tokens_details") or {}
                cached = details.get("cached_tokens", 0)
    first = first if first is not None else time.perf_counter() - start
    return (first, cached, "".join(text)) if with_text else (first, cached)


def restart_rows(stack, url: str, model: str, prefix_tokens: int, cache_dir: Path, warmup: bool) -> list[dict]:
    system = system_prompt(prefix_tokens)
    rows = []
    if warmup:  # MLX on CUDA compiles kernels for new shapes once per machine (PTX cache): not ours to time
        worker = stack.start_worker(model, PROMPT_CACHE_DIR=str(cache_dir), PROMPT_CACHE_DISK_GB="4")
        for question in ("Warm?", "Up?"):
            ttft(
                url, model, [{"role": "system", "content": "Warm-up. " + system}, {"role": "user", "content": question}]
            )
        worker.stop()
        restarted = stack.start_worker(model, PROMPT_CACHE_DIR=str(cache_dir), PROMPT_CACHE_DISK_GB="4")
        ttft(url, model, [{"role": "system", "content": "Warm-up. " + system}, {"role": "user", "content": "Again?"}])
        restarted.stop()
    for disk_gb in ("4", "0"):
        shutil.rmtree(cache_dir, ignore_errors=True)
        env = {"PROMPT_CACHE_DIR": str(cache_dir), "PROMPT_CACHE_DISK_GB": disk_gb}
        worker = stack.start_worker(model, **env)
        cold, _ = ttft(url, model, [{"role": "system", "content": system}, {"role": "user", "content": "First?"}])
        time.sleep(2.0)  # the disk write is off the request's path; let it land before the restart
        worker.stop()
        restarted = stack.start_worker(model, **env)
        warm, cached = ttft(url, model, [{"role": "system", "content": system}, {"role": "user", "content": "Next?"}])
        restarted.stop()
        rows.append({"disk_cache": disk_gb != "0", "cold_ttft_s": cold, "after_restart_ttft_s": warm,
                     "after_restart_cached_tokens": cached, "ratio": warm / cold})  # fmt: skip
    return rows


def memory_rows(stack, url: str, model: str, n: int, limit_gb: float) -> list[dict]:
    rows = []
    for controlled in (True, False):
        env = {"WORKER_MEMORY_GB": str(limit_gb) if controlled else "0", "PROMPT_CACHE_BYTES": "0",
               "WORKER_CAPACITY": str(n), "PROMPT_CACHE_DISK_GB": "0"}  # fmt: skip
        worker = stack.start_worker(model, **env)
        rows.append({"admission_control": controlled, "limit_bytes": int(limit_gb * 1024**3), "requests": n,
                     **burst(url, model, n)})  # fmt: skip
        worker.stop()
    return rows


def burst(url: str, model: str, n: int) -> dict:
    """`n` long requests at once; MLX's peak memory read from /admin/status while they run."""
    prompt = system_prompt(700)
    peaks: list[int] = []
    finished: list[bool] = []
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            for w in requests.get(url + "/admin/status", timeout=10).json()["workers"]:
                if w["model"] == model and w.get("memory"):
                    peaks.append(w["memory"].get("peak_bytes", 0))
            time.sleep(0.2)

    def ask(i: int) -> None:
        body = {"model": model, "messages": [{"role": "user", "content": f"{i} {prompt}"}], "max_tokens": 200}
        finished.append(requests.post(url + "/v1/chat/completions", json=body, timeout=1800).status_code == 200)

    watcher = threading.Thread(target=watch)
    watcher.start()
    start = time.perf_counter()
    threads = [threading.Thread(target=ask, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    time.sleep(1.5)  # one more heartbeat carries the final peak
    done.set()
    watcher.join()
    return {"completed": sum(finished), "peak_bytes": max(peaks, default=0), "wall_s": wall}


def routing_rows(stack, url: str, model: str, conversations: int, turns: int) -> list[dict]:
    """Two workers; `conversations` at once, each `turns` turns with its own long system prompt:
    through an API that routes by prefix and through one that does not (PREFIX_ROUTING=0)."""
    env = {"PROMPT_CACHE_DISK_GB": "0", "WORKER_CAPACITY": str(conversations)}
    workers = [stack.start_worker(model, **env) for _ in range(2)]
    _, plain_url = stack.start_api(PREFIX_ROUTING="0")
    rows = []
    for routed, api in ((True, url), (False, plain_url)):
        ttfts: list[float] = []
        cached: list[int] = []

        def talk(
            c: int, api: str = api, ttfts: list[float] = ttfts, cached: list[int] = cached, routed: bool = routed
        ) -> None:
            messages = [{"role": "system", "content": f"Conversation {c} of {routed}. {system_prompt(1000)}"}]
            for turn in range(turns):
                messages.append({"role": "user", "content": f"Turn {turn}: go on."})
                first, hit, text = ttft(api, model, messages, max_tokens=16, with_text=True)
                if turn:  # the first turn has nothing to find anywhere
                    ttfts.append(first)
                    cached.append(hit)
                messages.append({"role": "assistant", "content": text})

        threads = [threading.Thread(target=talk, args=(c,)) for c in range(conversations)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        ttfts.sort()
        rows.append({"routing": routed, "conversations": conversations, "turns": turns,
                     "ttft_p50_s": statistics.median(ttfts), "ttft_p95_s": ttfts[int(0.95 * (len(ttfts) - 1))],
                     "mean_cached_tokens": statistics.mean(cached)})  # fmt: skip
    for w in workers:
        w.stop()
    return rows


def on_gpu() -> bool:
    import mlx.core as mx

    return mx.default_device() != mx.cpu


def ensure_model(models_dir: Path, model: str) -> None:
    if model == "tiny-prefix" and not (models_dir / model).exists():
        from worker_text.tiny import build

        build(models_dir / model, hidden_size=256, num_hidden_layers=4, intermediate_size=512,
              max_position_embeddings=8192)  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="tiny-prefix")
    parser.add_argument("--models-dir", type=Path, default=ROOT / "var" / "models")
    parser.add_argument("--prefix-tokens", type=int, default=4096)
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--conversations", type=int, default=16)
    parser.add_argument("--turns", type=int, default=4)
    parser.add_argument("--parts", default="abc", help="which of (a), (b), (c) to run")
    parser.add_argument(
        "--warmup",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="an unmeasured round before (a) (default: on a GPU, where kernels compile once)",
    )
    parser.add_argument("--limit-gb", type=float, default=0.04, help="WORKER_MEMORY_GB in part (c)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    args.models_dir = args.models_dir.resolve()
    ensure_model(args.models_dir, args.model)
    cache_dir = Path(tempfile.mkdtemp(prefix="mis-prefix-"))
    with bench_stack(str(args.models_dir)) as (stack, url, _env):
        warmup = args.warmup if args.warmup is not None else on_gpu()
        restart = (
            restart_rows(stack, url, args.model, args.prefix_tokens, cache_dir, warmup) if "a" in args.parts else []
        )
        routing = routing_rows(stack, url, args.model, args.conversations, args.turns) if "b" in args.parts else []
        memory = memory_rows(stack, url, args.model, args.requests, args.limit_gb) if "c" in args.parts else []
    shutil.rmtree(cache_dir, ignore_errors=True)
    print(f"\nmodel {args.model} on {device_name()}")
    print(f"(a) ~{args.prefix_tokens}-token system prompt, first request after a worker restart")
    print(f"{'disk cache':<11} {'cold TTFT s':>12} {'restart TTFT s':>15} {'cached':>7} {'ratio':>6}")
    for r in restart:
        print(f"{'on' if r['disk_cache'] else 'off':<11} {r['cold_ttft_s']:>12.2f} {r['after_restart_ttft_s']:>15.2f} "
              f"{r['after_restart_cached_tokens']:>7} {r['ratio']:>6.2f}")  # fmt: skip
    print(f"(b) two workers, {args.conversations} conversations x {args.turns} turns (turns after the first)")
    print(f"{'routing':<8} {'TTFT p50 s':>11} {'TTFT p95 s':>11} {'mean cached':>12}")
    for r in routing:
        print(f"{'on' if r['routing'] else 'off':<8} {r['ttft_p50_s']:>11.2f} {r['ttft_p95_s']:>11.2f} "
              f"{r['mean_cached_tokens']:>12.0f}")  # fmt: skip
    print(f"(c) {args.requests} long requests at once")
    print(f"{'admission':<10} {'limit MB':>9} {'peak MB':>8} {'completed':>10} {'wall s':>7}")
    for r in memory:
        print(f"{'on' if r['admission_control'] else 'off':<10} {r['limit_bytes'] / 2**20:>9.1f} "
              f"{r['peak_bytes'] / 2**20:>8.1f} {r['completed']:>10} {r['wall_s']:>7.1f}")  # fmt: skip
    path = write_result(args.out, f"prefix-{args.model}", {"bench": "prefix", "model": args.model,
                        "prefix_tokens": args.prefix_tokens, "restart": restart, "routing": routing,
                        "memory": memory})  # fmt: skip
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

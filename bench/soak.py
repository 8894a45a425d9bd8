"""Soak: many streaming clients against one worker for a while; nothing may be lost.

    .venv/bin/python bench/soak.py [--clients 200] [--duration 300] [--model tiny-text] [--capacity 32]

Starts a throwaway stack (its own Redis, the API under gunicorn -k gevent with one process,
one worker of `--capacity`), then runs `--clients` threads, each streaming chat completions
back to back until `--duration` seconds have passed (the requests in flight then finish).
Every request is greedy with a fixed seed, asks for `logprobs` (one entry per generated
token, so the stream's tokens can be counted) and `include_usage`. Counted as errors: any
status but 200, any error event, any exception, a stream without usage or `[DONE]`.
Counted as token mismatches: logprob entries in the stream != usage.completion_tokens,
SSE ids not strictly increasing (a duplicated or reordered event); and, for every
`--rerun-every`-th request, a non-streamed rerun with the same parameters whose text or
tokens differ. The API's memory (RSS of the gunicorn master and its workers, from /proc)
is sampled every `--sample-every` seconds. Prints a summary and writes
bench/results/soak-<model>-<time>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RESULTS, bench_stack, write_result
from concurrency import TOPICS, percentile

MB = 1024 * 1024


class Tally:
    """What every client thread reports, under one lock."""

    def __init__(self):
        self.lock = threading.Lock()
        self.requests = self.tokens = self.reruns = 0
        self.errors: Counter[str] = Counter()
        self.mismatches: Counter[str] = Counter()
        self.examples: list[str] = []
        self.latencies: list[float] = []
        self.ttfts: list[float] = []

    def error(self, kind: str, detail: str, bucket: Counter | None = None) -> None:
        with self.lock:
            (self.errors if bucket is None else bucket)[kind] += 1
            if len(self.examples) < 10:
                self.examples.append(f"{kind}: {detail}"[:300])

    def mismatch(self, kind: str, detail: str) -> None:
        self.error(kind, detail, self.mismatches)


def body(model: str, client: int, n: int, max_tokens: int, stream: bool) -> dict:
    prompt = f"Client {client}, request {n % 5}: tell me about {TOPICS[(client + n) % len(TOPICS)]}."
    request = {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "seed": 1000 + client,
        "logprobs": True,
        "stream": stream,
    }
    if stream:
        request["stream_options"] = {"include_usage": True}
    return request


def stream_once(session: requests.Session, url: str, request: dict, tally: Tally) -> dict | None:
    """One streamed request, checked; returns its text and tokens, or None after an error."""
    started = time.perf_counter()
    text, tokens, usage, done, first, last_id = [], [], None, False, None, (0, -1)
    try:
        with session.post(url + "/v1/chat/completions", json=request, stream=True, timeout=(10, 300)) as response:
            if response.status_code != 200:
                tally.error(f"http_{response.status_code}", response.text)
                return None
            for line in response.iter_lines(decode_unicode=True):
                if line.startswith("id: "):
                    event_id = tuple(int(p) for p in line[4:].split("-"))
                    if event_id <= last_id:
                        tally.mismatch("sse_id_not_increasing", f"{last_id} then {event_id}")
                    last_id = event_id
                if not line.startswith("data: "):
                    continue
                if line == "data: [DONE]":
                    done = True
                    continue
                chunk = json.loads(line[6:])
                if "error" in chunk:
                    tally.error(f"event_{chunk['error'].get('code')}", chunk["error"].get("message", ""))
                    return None
                if chunk.get("usage"):
                    usage = chunk["usage"]
                for choice in chunk.get("choices", []):
                    if choice["delta"].get("content"):
                        first = first or time.perf_counter()
                        text.append(choice["delta"]["content"])
                    if choice.get("logprobs"):
                        tokens += [entry["token"] for entry in choice["logprobs"]["content"]]
    except (requests.RequestException, ValueError) as exc:
        tally.error(f"exception_{type(exc).__name__}", str(exc))
        return None
    if not done or usage is None:
        tally.error("stream_incomplete", f"done={done} usage={usage}")
        return None
    if len(tokens) != usage["completion_tokens"]:
        tally.mismatch("tokens_vs_usage", f"{len(tokens)} tokens streamed, usage says {usage['completion_tokens']}")
    with tally.lock:
        tally.requests += 1
        tally.tokens += usage["completion_tokens"]
        tally.latencies.append(time.perf_counter() - started)
        if first:
            tally.ttfts.append(first - started)
    return {"text": "".join(text), "tokens": tokens}


def rerun(session: requests.Session, url: str, request: dict, streamed: dict, tally: Tally) -> None:
    """The same request, not streamed: the same text and tokens, or a mismatch."""
    try:
        response = session.post(url + "/v1/chat/completions", json={**request, "stream": False}, timeout=300)
    except requests.RequestException as exc:
        tally.error(f"exception_{type(exc).__name__}", str(exc))
        return
    if response.status_code != 200:
        tally.error(f"http_{response.status_code}", response.text)
        return
    choice = response.json()["choices"][0]
    with tally.lock:
        tally.reruns += 1
    if choice["message"]["content"] != streamed["text"]:
        tally.mismatch("rerun_text", f"{streamed['text']!r} vs {choice['message']['content']!r}")
    elif [e["token"] for e in choice["logprobs"]["content"]] != streamed["tokens"]:
        tally.mismatch("rerun_tokens", "same text, other tokens")


def client(index: int, url: str, args, stop_at: float, tally: Tally, counter: list, counter_lock) -> None:
    session = requests.Session()
    n = 0
    while time.monotonic() < stop_at:
        request = body(args.model, index, n, args.max_tokens, stream=True)
        streamed = stream_once(session, url, request, tally)
        with counter_lock:
            counter[0] += 1
            check = counter[0] % args.rerun_every == 0
        if streamed is not None and check:
            rerun(session, url, request, streamed, tally)
        n += 1


def process_tree_rss(root: int) -> int:
    """Resident bytes of `root` and its children (gunicorn's master and workers)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        todo += children.get(pid, [])
        try:
            with open(f"/proc/{pid}/statm") as f:
                total += int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except OSError:
            pass
    return total


def sample_memory(
    api_pid: int, worker_pid: int, redis_conn, every: float, stop: threading.Event, samples: list
) -> None:
    started = time.monotonic()
    while True:
        samples.append(
            {
                "t": round(time.monotonic() - started, 1),
                "api_rss": process_tree_rss(api_pid),
                "worker_rss": process_tree_rss(worker_pid),
                "redis_used": redis_conn.info("memory")["used_memory"],
            }
        )
        if stop.wait(every):
            return


def slope_per_min(samples: list[dict], key: str) -> float:
    """Least-squares slope of `key` over time, in MB per minute."""
    ts, ys = [s["t"] for s in samples], [s[key] / MB for s in samples]
    if len(ts) < 2:
        return 0.0
    t_mean, y_mean = statistics.fmean(ts), statistics.fmean(ys)
    var = sum((t - t_mean) ** 2 for t in ts)
    return 60 * sum((t - t_mean) * (y - y_mean) for t, y in zip(ts, ys, strict=True)) / var if var else 0.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--duration", type=float, default=300, help="seconds of load")
    parser.add_argument("--model", default="tiny-text")
    parser.add_argument("--capacity", type=int, default=32, help="the worker's --capacity")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--rerun-every", type=int, default=20, help="rerun one request in N, not streamed")
    parser.add_argument("--sample-every", type=float, default=5.0, help="seconds between memory samples")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    import redis

    tally, samples, counter, counter_lock = Tally(), [], [0], threading.Lock()
    with bench_stack() as (stack, url, env):
        api = stack.procs[0]
        assert "gunicorn" in api.argv, api.argv
        worker = stack.start_worker(args.model, WORKER_CAPACITY=args.capacity)
        for i in range(2):  # warm-up, not counted
            stream_once(requests.Session(), url, body(args.model, i, 0, args.max_tokens, True), Tally())
        stop = threading.Event()
        sampler = threading.Thread(
            target=sample_memory,
            daemon=True,
            args=(api.pid, worker.pid, redis.Redis.from_url(env["REDIS_URL"]), args.sample_every, stop, samples),
        )
        sampler.start()
        started = time.monotonic()
        threads = [
            threading.Thread(
                target=client, args=(i, url, args, started + args.duration, tally, counter, counter_lock), daemon=True
            )
            for i in range(args.clients)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        wall = time.monotonic() - started
        stop.set()
        sampler.join()
    report(args, tally, samples, wall)
    return 1 if tally.errors or tally.mismatches else 0


def memory(samples: list[dict], key: str, settle: float) -> dict:
    """Idle (before the clients), then start/end/max and slope once `settle` seconds have passed."""
    settled = [s for s in samples if s["t"] >= settle] or samples
    values = [s[key] / MB for s in settled]
    return {
        "idle": samples[0][key] / MB,
        "start": values[0],
        "end": values[-1],
        "max": max(values),
        "slope_mb_per_min": slope_per_min(settled, key),
    }


def report(args, tally: Tally, samples: list[dict], wall: float) -> None:
    settle = min(60.0, args.duration / 4)
    result = {
        "bench": "soak",
        "model": args.model,
        "clients": args.clients,
        "duration_s": args.duration,
        "wall_s": round(wall, 1),
        "capacity": args.capacity,
        "max_tokens": args.max_tokens,
        "requests": tally.requests,
        "reruns": tally.reruns,
        "tokens": tally.tokens,
        "tok_s": round(tally.tokens / wall, 1),
        "requests_per_s": round(tally.requests / wall, 2),
        "errors": dict(tally.errors),
        "mismatches": dict(tally.mismatches),
        "examples": tally.examples,
        "latency_s_p50": statistics.median(tally.latencies) if tally.latencies else None,
        "latency_s_p95": percentile(tally.latencies, 95) if tally.latencies else None,
        "ttft_s_p50": statistics.median(tally.ttfts) if tally.ttfts else None,
        "ttft_s_p95": percentile(tally.ttfts, 95) if tally.ttfts else None,
        "memory_settle_s": settle,
        "api_rss_mb": memory(samples, "api_rss", settle),
        "worker_rss_mb": memory(samples, "worker_rss", settle),
        "redis_used_mb": memory(samples, "redis_used", settle),
        "samples": samples,
    }
    redis_mb = result["redis_used_mb"]
    # What a finished request leaves in Redis: growth over the run per request answered.
    result["redis_bytes_per_request"] = round((redis_mb["end"] - redis_mb["idle"]) * MB / max(tally.requests, 1))
    print(
        f"\nsoak: {args.clients} streaming clients, {wall:.0f} s, model {args.model}, capacity {args.capacity}, "
        f"{args.max_tokens} tokens per request"
    )
    print(
        f"requests {tally.requests} ({result['requests_per_s']}/s), tokens {tally.tokens} ({result['tok_s']} tok/s), "
        f"non-streamed reruns {tally.reruns}"
    )
    print(
        f"latency p50 {result['latency_s_p50'] or 0:.2f} s p95 {result['latency_s_p95'] or 0:.2f} s; "
        f"TTFT p50 {result['ttft_s_p50'] or 0:.2f} s p95 {result['ttft_s_p95'] or 0:.2f} s"
    )
    print(
        f"errors {sum(tally.errors.values())} {dict(tally.errors)}; "
        f"token mismatches {sum(tally.mismatches.values())} {dict(tally.mismatches)}"
    )
    print(f"memory in MB (start/end/max/slope from {settle:.0f} s on, when every client is connected):")
    for name in ("api_rss_mb", "worker_rss_mb", "redis_used_mb"):
        m = result[name]
        print(
            f"  {name:<14} idle {m['idle']:6.1f}  start {m['start']:6.1f}  end {m['end']:6.1f}  "
            f"max {m['max']:6.1f}  slope {m['slope_mb_per_min']:+.2f} MB/min"
        )
    print(f"  Redis kept {result['redis_bytes_per_request']} bytes per finished request")
    for line in tally.examples:
        print("  ", line)
    write_result(args.out, f"soak-{args.model.replace('/', '_')}", result)


if __name__ == "__main__":
    sys.exit(main())

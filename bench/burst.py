"""Where a burst's time to first token goes, job by job: N streaming clients at once through the
whole stack, each request timed at the client, in rq's job record and in its Redis stream.

    python bench/burst.py MODEL [--models-dir var/models] [--levels 8 32] [--max-tokens 32]

For every request (one host, one clock: the client's time.time(), rq's timestamps and the
stream entry ids Redis stamps in ms):
  api      client sends -> rq `enqueued_at` (HTTP, gunicorn, the API's checks, the enqueue)
  queue    `enqueued_at` -> `started_at` (waiting for the worker's admission pass, and it)
  engine   `started_at` -> the stream's first `delta` entry (the engine taking it, waiting for
           the step in progress, prefill, the first token, the step's write)
  deliver  first `delta` entry -> the client reads its first content (API relay, SSE)
and how many admission passes each round took (distinct `started_at`, 1 ms apart). Prints
p50/max per part and writes bench/results/burst-<model>-<time>.json.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from datetime import UTC
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RESULTS, bench_stack, device_name, sse_chunks, write_result
from concurrency import story
from redis import Redis
from rq.utils import utcparse

from contract.keys import Keys

PARTS = ("api", "queue", "engine", "deliver", "ttft")


def one_request(
    url: str, model: str, messages: list, max_tokens: int, gate: threading.Barrier, conn: Redis, keys: Keys, out: list
) -> None:
    body = {"model": model, "messages": messages, "max_tokens": max_tokens, "temperature": 0, "stream": True}
    record: dict = {"first": None, "error": None}
    gate.wait()
    record["sent"] = time.time()
    try:
        with requests.post(url + "/v1/chat/completions", json=body, stream=True, timeout=600) as response:
            response.raise_for_status()
            for chunk in sse_chunks(response):
                choices = chunk.get("choices") or [{}]
                if record["first"] is None and choices[0].get("delta", {}).get("content"):
                    record["first"] = time.time()
                    # rq keeps no record of a finished chat job, and the API drops a stream it
                    # has relayed: read both while the job runs
                    job_id = chunk["id"].removeprefix("chatcmpl-")
                    pipe = conn.pipeline()
                    pipe.hmget(f"rq:job:{job_id}", "enqueued_at", "started_at")
                    pipe.xrange(keys.stream(job_id), count=8)
                    record["job"], record["entries"] = pipe.execute()
    except requests.RequestException as exc:
        record["error"] = str(exc)
    out.append(record)


def timeline(record: dict) -> dict | None:
    if record["first"] is None or None in record["job"]:  # failed, or ended before it was read
        return None
    enqueued, started = (utcparse(raw.decode()).replace(tzinfo=UTC).timestamp() for raw in record["job"])
    first_delta = next(
        (int(i.split(b"-")[0]) / 1000 for i, fields in record["entries"] if fields.get(b"type") == b"delta"), None
    )
    if first_delta is None:  # the API had relayed the whole stream and dropped it already
        return None
    return {
        "api": enqueued - record["sent"],
        "queue": started - enqueued,
        "engine": first_delta - started,
        "deliver": record["first"] - first_delta,
        "ttft": record["first"] - record["sent"],
        "started_at": started,
    }


def run_level(
    url: str, model: str, clients: int, max_tokens: int, round_no: int, conn: Redis, keys: Keys
) -> list[dict]:
    out: list[dict] = []
    gate = threading.Barrier(clients)
    threads = [
        threading.Thread(target=one_request, args=(url, model, story(round_no, i), max_tokens, gate, conn, keys, out))
        for i in range(clients)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def passes(rows: list[dict]) -> int:
    """Admission passes one round's requests took: distinct rq start times, 1 ms apart."""
    starts = sorted(r["started_at"] for r in rows)
    return 1 + sum(1 for a, b in zip(starts, starts[1:], strict=False) if b - a > 0.001)


def summarize(rows: list[dict]) -> dict:
    summary: dict = {"requests": len(rows)}
    for part in PARTS:
        values = sorted(r[part] * 1000 for r in rows)
        summary[f"{part}_ms_p50"] = statistics.median(values)
        summary[f"{part}_ms_max"] = values[-1]
    return summary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model")
    parser.add_argument("--models-dir", type=Path, default=None)
    parser.add_argument("--levels", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--worker-env", nargs="*", default=[], help="NAME=VALUE settings for the worker")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    result: dict = {"bench": "burst", "model": args.model, "worker_env": args.worker_env, "levels": []}
    with bench_stack(models_dir=str(args.models_dir) if args.models_dir else None) as (stack, url, env):
        worker_env = dict(pair.split("=", 1) for pair in args.worker_env)
        stack.start_worker(args.model, WORKER_CAPACITY=max(args.levels), **worker_env)
        conn, keys = Redis.from_url(env["REDIS_URL"]), Keys(env["KEY_PREFIX"])
        print(f"{'clients':>7} " + " ".join(f"{p + ' p50/max ms':>20}" for p in PARTS) + "  passes")
        for clients in args.levels:
            run_level(url, args.model, clients, 8, clients * 100 + 99, conn, keys)  # unmeasured: compiles
            rows, errors, rounds_passes = [], 0, []
            for r in range(args.rounds):
                records = run_level(url, args.model, clients, args.max_tokens, clients * 100 + r, conn, keys)
                errors += sum(1 for rec in records if rec["error"])
                timed = [t for rec in records if (t := timeline(rec)) is not None]
                rounds_passes.append(passes(timed))
                rows += timed
            summary = {"clients": clients, "errors": errors, **summarize(rows), "admission_passes": rounds_passes}
            result["levels"].append({**summary, "requests_timeline": rows})
            cells = " ".join(f"{summary[p + '_ms_p50']:>9.1f}/{summary[p + '_ms_max']:<10.1f}" for p in PARTS)
            print(f"{clients:>7} {cells}  {'/'.join(map(str, rounds_passes))}", flush=True)
    result["device_name"] = device_name()
    write_result(args.out, f"burst-{args.model}", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())

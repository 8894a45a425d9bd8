"""A long prompt and a short chat on one CPU worker (Hardening II's "the engine never stalls"):
how soon the short one's first token arrives while the long one prefills, and how soon a cancel
of the long one frees its slot — the whole stack, a real model.

    .venv/bin/python bench/stall.py [--model SmolLM2-135M-Instruct] [--prefill-chunk 64]

Prints a table and writes bench/results/stall-<model>-<time>.json.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RESULTS, bench_stack, write_result

from contract.context import Context
from contract.queues import cancel_job
from contract.settings import Settings

LONG = "👨‍👩‍👧‍👦" * 200  # 3,630 tokens for SmolLM2's tokenizer: the prompt that once stalled a worker 18 min


def stream(url: str, model: str, content: str, marks: dict, name: str, stop: threading.Event | None = None) -> None:
    body = {"model": model, "messages": [{"role": "user", "content": content}], "max_tokens": 4, "temperature": 0,
            "stream": True}  # fmt: skip
    marks[f"{name}_sent"] = time.perf_counter()
    with requests.post(url + "/v1/chat/completions", json=body, stream=True, timeout=900) as response:
        marks[f"{name}_job"] = response.headers.get("X-Request-Id", "").removeprefix("chatcmpl-")
        for line in response.iter_lines(decode_unicode=True):
            if line and '"content":"' in line and '"content":""' not in line and f"{name}_first" not in marks:
                marks[f"{name}_first"] = time.perf_counter()
            if stop is not None and stop.is_set():
                marks[f"{name}_closed"] = time.perf_counter()
                return  # leaving the with-block closes the connection: the API cancels the job


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="SmolLM2-135M-Instruct")
    parser.add_argument("--prefill-chunk", type=int, default=0)
    args = parser.parse_args()
    extra = {"PREFILL_CHUNK": str(args.prefill_chunk)} if args.prefill_chunk else {}
    with bench_stack() as (stack, url, env):
        ctx = Context.connect(Settings(redis_url=env["REDIS_URL"], key_prefix=env["KEY_PREFIX"]))
        stack.start_worker(args.model, **extra)
        warm = {"model": args.model, "messages": [{"role": "user", "content": "warm up"}], "max_tokens": 2}
        requests.post(url + "/v1/chat/completions", timeout=300, json=warm)
        results = {}
        for how in ("flag", "disconnect"):
            marks: dict = {}
            stop_long = threading.Event()
            long = threading.Thread(target=stream, args=(url, args.model, LONG, marks, "long", stop_long))
            long.start()
            time.sleep(2.0)  # the long prompt is prefilling
            stream(url, args.model, "Hi", marks, "short")
            results[f"short_ttft_s_{how}_round"] = round(marks["short_first"] - marks["short_sent"], 2)
            started = time.perf_counter()
            if how == "flag":
                cancel_job(ctx, marks["long_job"])  # what a cancel by id does
            else:
                stop_long.set()  # the client goes away: the API notices at a keepalive write
            freed = None
            while time.perf_counter() - started < 600:
                status = requests.get(url + "/admin/status", timeout=10).json()
                mine = [w for w in status["workers"] if w["model"] == args.model]
                if mine and mine[0]["active_jobs"] == 0:
                    freed = round(time.perf_counter() - started, 2)
                    break
                time.sleep(0.1)
            results[f"slot_freed_after_{how}_s"] = freed
            stop_long.set()
            long.join(timeout=30)
    rows = {**results, "long_prompt_chars": len(LONG), "prefill_chunk": args.prefill_chunk or "default"}
    print(f"model {args.model}, a {len(LONG)}-char prompt prefilling beside a short chat")
    for key, value in rows.items():
        print(f"{key:24} {value}")
    write_result(RESULTS, f"cpu-stall-{args.model}", rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())

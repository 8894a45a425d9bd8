"""One request's time to first token in our engine (in-process, no queue), by what the
request brings to the GPU: a prompt length the process has not prefilled before, one it has,
or a prompt whose start is in the prompt cache. One process per MLX setting.

    python bench/first_token.py MODEL_DIR [--requests 8] [--settings default cudnn=0 sdpa_cache=64]

Why: through the stack a lone 7B request waited ~90 ms longer in the worker than the same
engine in-process (bench/burst.py, H200), and not on the CPU. In-process benchmarks repeat
their prompt lengths; real traffic does not. MLX's CUDA attention uses cuDNN for a prefill
whose queries and keys are the same length (no cached prefix) and builds a cuDNN graph per
shape (kept in an LRU of MLX_CUDA_SDPA_CACHE_SIZE, 16 by default); a prefill after a cached
prefix takes MLX's unfused path instead. Phases, each over `--requests` requests, greedy, 1 token:
  new      prompt lengths not seen before in this process, no prompt cache
  repeat   the same prompts again (every shape seen)
  cached   follow-ups whose conversation so far is in the prompt cache (RAM), new lengths
  long     prompts of ~2,000 tokens (four prefill chunks on a GPU), new lengths: what turning
           cuDNN off costs a long prefill, whose first chunk alone has queries as long as keys
  burst    eight requests added at once (each's time to its first token), twice
  split    the same eight as two groups of four one engine step apart, as a burst that reaches
           a worker in two admission passes does (bench/burst.py)
Settings: `cudnn=0|1` (MLX_CUDA_USE_CUDNN_SDPA), `sdpa_cache=N` (MLX_CUDA_SDPA_CACHE_SIZE),
`keep_cache=1` (mlx-lm's `mx.clear_cache()` after every prefill chunk made a no-op: on CUDA the
next step allocates its buffers again), joined by commas; `default` sets none. Prints p50/max ms per phase and writes
bench/results/first-token-<time>.json. Meaningful on a GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RESULTS, device_name, in_processes, write_result

VARIABLES = {
    "cudnn": "MLX_CUDA_USE_CUDNN_SDPA",
    "sdpa_cache": "MLX_CUDA_SDPA_CACHE_SIZE",
    "keep_cache": "BENCH_KEEP_MLX_CACHE",
}
PHASES = ("new", "repeat", "cached", "long", "burst", "split")
WORDS = [
    "the",
    "quiet",
    "harbour",
    "town",
    "wakes",
    "slowly",
    "under",
    "a",
    "pale",
    "grey",
    "morning",
    "sky",
    "while",
    "gulls",
    "circle",
]


def child(model_dir: Path, requests: int) -> dict:
    import mlx.core as mx

    if os.environ.get("BENCH_KEEP_MLX_CACHE") == "1":
        mx.clear_cache = lambda: None  # mlx-lm calls it as mx.clear_cache(): every caller sees this

    from contract.payloads import ChatJob, ChatMessage, SamplingParams
    from contract.settings import Settings
    from worker_text.engine import TextEngine
    from worker_text.loading import load_text_model

    text_model = load_text_model(model_dir.name, Settings(models_dir=str(model_dir.parent)))
    engine = TextEngine(text_model, capacity=8, prompt_cache_bytes=1 << 30)
    counter = iter(range(1_000_000))

    def first_tokens(groups: list[list[list[dict]]]) -> list[float]:
        """Each group's requests added together, one engine step before the next group (as
        admission passes reach the engine); each request's time from its add to its first token."""
        started: dict[str, float] = {}
        firsts: dict[str, float] = {}
        ended: set[str] = set()
        waiting = list(groups)
        while waiting or len(ended) < len(started):  # all end before the next call
            for messages in waiting.pop(0) if waiting else []:
                job_id = f"j{next(counter)}"
                job = ChatJob(
                    model=model_dir.name,
                    max_tokens=1,
                    sampling=SamplingParams(temperature=0),
                    messages=[ChatMessage(**m) for m in messages],
                )
                started[job_id] = time.perf_counter()
                engine.add(job_id, job)
            events, finished = engine.step()
            now = time.perf_counter()
            for job_id in [j for j, kind, _ in events if kind == "delta"] + list(finished):
                firsts.setdefault(job_id, now - started[job_id])
            ended.update(finished)
        return [firsts[job_id] for job_id in started]

    def first_token(messages: list[dict]) -> float:
        return first_tokens([[messages]])[0]

    def story(i: int) -> list[dict]:  # lengths grow by one word each: a new prefill shape each
        return [{"role": "user", "content": f"Story {i}: " + " ".join(WORDS[: 2 + i % len(WORDS)])}]

    first_token(story(999))  # loads kernels and compiles what any request needs
    lru = type(engine.caches.ram)
    engine.caches.ram = lru(max_bytes=0)  # no prompt cache for these two phases
    base = 100
    new = [first_token(story(base + i)) for i in range(requests)]
    repeat = [first_token(story(base + i)) for i in range(requests)]
    engine.caches.ram = lru(max_bytes=1 << 30)
    cached = []
    for i in range(requests):
        opening = story(base + i)
        first_token(opening)  # its prompt and answer are now in the cache
        follow = [*opening, {"role": "assistant", "content": "Yes."}, {"role": "user", "content": "More" + "!" * i}]
        cached.append(first_token(follow))
    engine.caches.ram = lru(max_bytes=0)
    size = min(2000, text_model.context_length - 100)  # tokens; the tiny test model has 2,048
    essay = " ".join(WORDS)
    while len(text_model.tokenizer.encode(essay)) < size:
        essay += " " + " ".join(WORDS)
    long = [first_token([{"role": "user", "content": f"Essay {i}: {essay} " + "more " * i}]) for i in range(4)]
    burst, split = [], []
    for b in range(2):  # eight new prompts at once, and as two admission passes of four
        stories = [story(300 + 20 * b + i) for i in range(8)]
        burst += first_tokens([stories])
        split += first_tokens([stories[:4], stories[4:]])
    phases = {"new": new, "repeat": repeat, "cached": cached, "long": long, "burst": burst, "split": split}
    return {**phases, "device": str(mx.default_device())}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model", type=Path, help="an mlx-lm model directory")
    parser.add_argument("--requests", type=int, default=8)
    parser.add_argument("--settings", nargs="+", default=["default", "cudnn=0", "sdpa_cache=256"])
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.model, args.requests)))
        return 0
    rows = []
    print(f"{'setting':<20} " + " ".join(f"{p + ' p50/max ms':>20}" for p in PHASES))
    argv = [sys.executable, __file__, str(args.model), "--requests", str(args.requests), "--child"]
    for setting, result in in_processes(argv, args.settings, VARIABLES):
        rows.append(row := {"setting": setting, **result})
        if "error" not in row:
            cells = " ".join(f"{1000 * statistics.median(row[p]):>9.1f}/{1000 * max(row[p]):<10.1f}" for p in PHASES)
            print(f"{setting:<20} {cells}", flush=True)
    write_result(args.out, "first-token", {"bench": "first-token", "device_name": device_name(),
                                           "model": args.model.name, "rows": rows})  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())

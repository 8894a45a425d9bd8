"""What the queue path costs: time-to-first-token and decode tokens/s for the same model and
prompt, in-process (mlx-lm `stream_generate`) and through the whole stack (HTTP → gunicorn →
Redis queue → worker → Redis Stream → SSE), measured side by side, interleaved, in one run.

    .venv/bin/python bench/overhead.py [--model SmolLM2-135M-Instruct] [--runs 7] [--max-tokens 48]

Prints a table and writes bench/results/overhead-<model>-<time>.json. Both sides decode
greedily, so they produce the same tokens; the stack side times from just before the HTTP
request to the first SSE content delta, exactly as a client sees it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RESULTS, bench_stack, device_name, sse_lines, write_result

from contract.settings import Settings

PROMPT = [{"role": "user", "content": "Tell me a long story about a lighthouse keeper and a storm."}]


def in_process(engine, prompt_ids: list[int], max_tokens: int) -> tuple[float, float, int]:
    import mlx.core as mx
    from mlx_lm import stream_generate

    start = time.perf_counter()
    stamps = []
    for _ in stream_generate(engine.model, engine.tokenizer, mx.array(prompt_ids), max_tokens=max_tokens):
        stamps.append(time.perf_counter())
    return _rates(start, stamps)


HTTP = requests.Session()
"""One keep-alive connection, as a real client would hold."""


def through_stack(url: str, model: str, max_tokens: int) -> tuple[float, float, int]:
    body = {
        "model": model,
        "messages": PROMPT,
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    start = time.perf_counter()
    stamps, tokens = [], 0
    with HTTP.post(url + "/v1/chat/completions", json=body, stream=True, timeout=600) as response:
        response.raise_for_status()
        for line in sse_lines(response):
            if line.startswith(b"data: {") and b'"content":"' in line and b'"content":""' not in line:
                stamps.append(time.perf_counter())
            elif line.startswith(b"data: {") and b'"usage":{' in line:
                tokens = json.loads(line[6:])["usage"]["completion_tokens"]
    # An SSE event may carry several tokens (steps that outran Redis are merged), so the
    # rate counts tokens from the usage, between the first and the last content event.
    return _rates(start, stamps, tokens)


def _rates(start: float, stamps: list[float], tokens: int | None = None) -> tuple[float, float, int]:
    tokens = tokens or len(stamps)
    ttft = stamps[0] - start
    decode = (tokens - 1) / (stamps[-1] - stamps[0]) if len(stamps) > 1 else 0.0
    return ttft, decode, tokens


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="SmolLM2-135M-Instruct")
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    from contract.payloads import ChatJob
    from worker_text.loading import load_text_model

    with bench_stack() as (stack, url, env):
        stack.start_worker(args.model)
        engine = load_text_model(args.model, Settings(models_dir=env["MODELS_DIR"]))
        prompt_ids = engine.encode_chat(ChatJob(model=args.model, messages=PROMPT, max_tokens=1))
        rows = {"in-process": [], "stack": []}
        for run in range(args.runs + 1):  # run 0 warms both sides up and is dropped
            a = in_process(engine, prompt_ids, args.max_tokens)
            b = through_stack(url, args.model, args.max_tokens)
            if run:
                rows["in-process"].append(a)
                rows["stack"].append(b)
    report(args, rows, len(prompt_ids))
    return 0


def report(args, rows: dict, prompt_tokens: int) -> None:
    summary = {}
    for side, runs in rows.items():
        summary[side] = {
            "ttft_ms_p50": statistics.median(r[0] for r in runs) * 1000,
            "decode_tok_s_p50": statistics.median(r[1] for r in runs),
            "tokens": runs[0][2],
            "runs": [{"ttft_ms": r[0] * 1000, "decode_tok_s": r[1], "tokens": r[2]} for r in runs],
        }
    inp, stk = summary["in-process"], summary["stack"]
    added_ms = stk["ttft_ms_p50"] - inp["ttft_ms_p50"]
    decode_ratio = stk["decode_tok_s_p50"] / inp["decode_tok_s_p50"]
    print(
        f"\nmodel {args.model}, prompt {prompt_tokens} tokens, {inp['tokens']} generated, "
        f"{args.runs} runs each, interleaved, on {device_name()}"
    )
    print(f"{'path':<12} {'TTFT p50 ms':>12} {'decode tok/s p50':>17}")
    for side in ("in-process", "stack"):
        print(f"{side:<12} {summary[side]['ttft_ms_p50']:>12.1f} {summary[side]['decode_tok_s_p50']:>17.2f}")
    print(
        f"added TTFT p50: {added_ms:+.1f} ms (target <= 5 ms); "
        f"decode ratio stack/in-process: {decode_ratio:.3f} (target >= 0.97)"
    )
    result = {
        "bench": "overhead",
        "model": args.model,
        "prompt_tokens": prompt_tokens,
        "max_tokens": args.max_tokens,
        "added_ttft_ms_p50": added_ms,
        "decode_ratio": decode_ratio,
        **summary,
    }
    write_result(args.out, f"overhead-{args.model.replace('/', '_')}", result)


if __name__ == "__main__":
    sys.exit(main())

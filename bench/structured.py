"""What constrained decoding costs: 8 streams under a nested JSON schema against the same 8
unconstrained, side by side in one run, on our engine in-process (no network: the grammar's
cost, not the stack's).

    .venv/bin/python bench/structured.py [--models tiny-text SmolLM2-135M-Instruct] [--streams 8]
                                         [--max-tokens 128] [--rounds 3]
    python bench/structured.py --shapes qwen2.5-0.5b qwen2.5-7b      # on a GPU: random 4-bit
                                                                     # weights of those shapes

Each round runs the unconstrained batch, then the constrained batch, then a mixed one (half
and half), with the same prompts, greedy. The schema's array has `minItems` high enough that
no constrained answer can end before `--max-tokens`, so both batches keep every stream to the
end and the rates compare like for like. Reports the aggregate decode rate of each (tokens /
wall time from the first token on), the ratio constrained / unconstrained, and the time spent
computing masks per engine step (all constrained rows together) and per row. Prints a table
and writes bench/results/structured-<time>.json.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RESULTS, ROOT, device_name, write_result

SCHEMA = {
    "type": "object",
    "properties": {
        "title": {"type": "string", "maxLength": 40},
        "items": {
            "type": "array",
            "minItems": 200,
            "items": {
                "type": "object",
                "properties": {
                    "name": {"type": "string", "maxLength": 12},
                    "qty": {"type": "integer", "minimum": 0, "maximum": 999},
                    "tags": {"type": "array", "items": {"enum": ["a", "b", "c"]}, "maxItems": 3},
                },
                "required": ["name", "qty", "tags"],
                "additionalProperties": False,
            },
        },
    },
    "required": ["title", "items"],
    "additionalProperties": False,
}


def run_batch(engine, model: str, streams: int, constrained: list[bool], max_tokens: int, tag: str) -> dict:
    from api.structured import schema_grammar
    from contract.payloads import ChatJob, ChatMessage, SamplingParams

    grammar = schema_grammar(SCHEMA)
    made: list = []
    make = engine.grammars.processor
    engine.grammars.processor = lambda g: made.append(p := make(g)) or p  # keep them, for their mask times
    try:
        first: float | None = None
        start = time.perf_counter()
        for i in range(streams):
            job = ChatJob(
                model=model,
                max_tokens=max_tokens,
                sampling=SamplingParams(temperature=0),
                messages=[ChatMessage(role="user", content=f"List the contents of warehouse {i} as JSON.")],
                grammar=grammar if constrained[i] else None,
            )
            engine.add(f"{tag}-{i}", job)
        done: dict[str, dict] = {}
        steps = 0
        while len(done) < streams:
            events, finished = engine.step()
            steps += 1
            if first is None and any(kind == "delta" for _, kind, _ in events):
                first = time.perf_counter()
            done.update(finished)
        wall = time.perf_counter() - (first or start)
    finally:
        engine.grammars.processor = make
    tokens = sum(u["completion_tokens"] for u in done.values())
    mask_s = sum(p.mask_s for p in made)
    return {
        "tokens": tokens,
        "decode_tok_s": (tokens - streams) / wall,
        "steps": steps,
        "mask_ms_per_step": 1000 * mask_s / steps if made else 0.0,
        "mask_ms_per_row_step": 1000 * mask_s / max(1, sum(p.steps for p in made)) if made else 0.0,
    }


def measure(model: str, streams: int, max_tokens: int, rounds: int, models_dir: Path) -> dict:
    from contract.settings import Settings
    from worker_text.engine import TextEngine
    from worker_text.loading import load_text_model

    text_model = load_text_model(model, Settings(models_dir=str(models_dir)))
    engine = TextEngine(text_model, capacity=streams, prompt_cache_bytes=0)
    kinds = {
        "unconstrained": [False] * streams,
        "constrained": [True] * streams,
        "mixed": [i % 2 == 0 for i in range(streams)],
    }
    run_batch(engine, model, streams, kinds["constrained"], 8, "warm")  # tokenizer, kernels
    runs: dict[str, list[dict]] = {k: [] for k in kinds}
    for r in range(rounds):
        for kind, constrained in kinds.items():
            runs[kind].append(run_batch(engine, model, streams, constrained, max_tokens, f"{kind}{r}"))
            last = runs[kind][-1]
            print(f"  {model} round {r} {kind}: {last['decode_tok_s']:.1f} tok/s, "
                  f"mask {last['mask_ms_per_step']:.2f} ms/step", flush=True)  # fmt: skip
    rows = {
        kind: {
            "decode_tok_s": statistics.median(x["decode_tok_s"] for x in xs),
            "tokens": xs[-1]["tokens"],
            "mask_ms_per_step": statistics.median(x["mask_ms_per_step"] for x in xs),
            "mask_ms_per_row_step": statistics.median(x["mask_ms_per_row_step"] for x in xs),
            "runs": xs,
        }
        for kind, xs in runs.items()
    }
    ratio = rows["constrained"]["decode_tok_s"] / rows["unconstrained"]["decode_tok_s"]
    return {"model": model, "streams": streams, "max_tokens": max_tokens, "rows": rows, "ratio": ratio}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["tiny-text", "SmolLM2-135M-Instruct"])
    parser.add_argument("--streams", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--shapes", nargs="+", default=[], help="random 4-bit models of bench/gpu.py's shapes instead")
    parser.add_argument("--shapes-dir", type=Path, default=Path("/tmp/mis-shapes"))
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.shapes:
        from gpu import SHAPES

        from worker_text.tiny import build_shaped

        for shape in args.shapes:
            if not (args.shapes_dir / shape / "config.json").is_file():
                build_shaped(args.shapes_dir / shape, SHAPES[shape], bits=4)
        runs = [(shape, args.shapes_dir) for shape in args.shapes]
    else:
        runs = [(model, ROOT / "var" / "models") for model in args.models]
    results = [measure(m, args.streams, args.max_tokens, args.rounds, d) for m, d in runs]
    print(f"\nconstrained decoding, {args.streams} streams, {args.max_tokens} tokens each, {device_name()}")
    print(f"{'model':<26}{'batch':<15}{'decode tok/s':>13}{'mask ms/step':>14}{'mask ms/row':>13}")
    for result in results:
        for kind, row in result["rows"].items():
            print(
                f"{result['model']:<26}{kind:<15}{row['decode_tok_s']:>13.1f}"
                f"{row['mask_ms_per_step']:>14.3f}{row['mask_ms_per_row_step']:>13.3f}"
            )
        print(f"{'':<26}{'ratio':<15}{result['ratio']:>13.3f}  (constrained / unconstrained)")
    write_result(args.out, "structured", {"bench": "structured", "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())

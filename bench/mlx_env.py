"""Decode speed under MLX's CUDA runtime settings: one process per setting, each loading the
model with our kernels (FAST_QUANT, fused decode) and timing one stream through mlx-lm's
generate_step and 1 and 8 streams through its BatchGenerator (our engine's path).

    python bench/mlx_env.py MODEL_DIR [--tokens 128] [--settings default ops=100 graphs=0 ...]

Why: one 7B decode stream on an H200 is bound by the host (bench/kernels.py --decode: the GPU
waits for MLX to build and launch ~430 kernels per token). MLX's CUDA backend records launches
into CUDA graphs of at most MLX_MAX_OPS_PER_BUFFER nodes (20 by default), updates a cached
executable graph for each and launches it; these settings change that cost. A setting is
`ops=N` (MLX_MAX_OPS_PER_BUFFER), `mb=N` (MLX_MAX_MB_PER_BUFFER), `graphs=0|1`
(MLX_USE_CUDA_GRAPHS), `cache=N` (MLX_CUDA_GRAPH_CACHE_SIZE), `bfs=N` (MLX_BFS_MAX_WIDTH),
joined by commas (`ops=100,cache=400`); `default` sets none. Read once when MLX starts, hence a
process each. Prints a table and writes bench/results/mlx-env-<time>.json. Meaningful on a GPU.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RESULTS, device_name, in_processes, write_result

VARIABLES = {
    "ops": "MLX_MAX_OPS_PER_BUFFER",
    "mb": "MLX_MAX_MB_PER_BUFFER",
    "graphs": "MLX_USE_CUDA_GRAPHS",
    "cache": "MLX_CUDA_GRAPH_CACHE_SIZE",
    "bfs": "MLX_BFS_MAX_WIDTH",
}
DEFAULT_SETTINGS = ["default", "ops=50", "ops=100", "ops=200", "graphs=0", "bfs=1", "ops=100,cache=1000"]


def batch_rate(model, prompts: list[list[int]], tokens: int) -> float:
    """Aggregate decode tokens/s of len(prompts) streams decoded together: tokens after the
    step where every stream has its first token, over the time since."""
    from mlx_lm.generate import BatchGenerator

    generator = BatchGenerator(model, completion_batch_size=len(prompts), prefill_batch_size=len(prompts))
    generator.insert(prompts, max_tokens=[tokens] * len(prompts))
    seen: set[int] = set()
    start, count = 0.0, 0
    while True:
        responses = generator.next_generated()
        if not responses:
            break
        if len(seen) == len(prompts):
            count += len(responses)
        else:
            seen.update(r.uid for r in responses)
            if len(seen) == len(prompts):
                start = time.perf_counter()
    generator.close()
    return count / (time.perf_counter() - start)


def child(model_dir: Path, tokens: int) -> dict:
    """Runs in the process whose environment holds the setting."""
    import mlx.core as mx
    from kernels import tokens_per_second
    from mlx_lm import load

    from mlx_common.fused_decode import prepare_decode
    from worker_text import batch_cache

    model, tokenizer = load(str(model_dir))
    prepare_decode(model, fast=True)
    batch_cache.install()  # as TextEngine does
    prompts = [tokenizer.encode(f"Tell me about the {w} at dawn, part {i}.") for i, w in enumerate("abcdefgh")]
    one = tokens_per_second(model, prompts[:4], tokens)
    batch_rate(model, prompts, 16)  # compiles the 8-row shapes
    return {
        "generate_step_1": one,
        "batch_1": batch_rate(model, prompts[:1], tokens),
        "batch_8": batch_rate(model, prompts, tokens),
        "device": str(mx.default_device()),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model", type=Path, help="a quantized mlx-lm model directory")
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--settings", nargs="+", default=DEFAULT_SETTINGS)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.model, args.tokens)))
        return 0
    rows = []
    print(f"{'setting':<22} {'generate_step 1':>16} {'batch 1':>9} {'batch 8':>9}  tok/s")
    argv = [sys.executable, __file__, str(args.model), "--tokens", str(args.tokens), "--child"]
    for setting, result in in_processes(argv, args.settings, VARIABLES):
        rows.append(row := {"setting": setting, **result})
        if "error" not in row:
            print(f"{setting:<22} {row['generate_step_1']:>16.1f} {row['batch_1']:>9.1f} {row['batch_8']:>9.1f}",
                  flush=True)  # fmt: skip
    write_result(args.out, "mlx-env", {"bench": "mlx-env", "device_name": device_name(), "model": args.model.name,
                                       "tokens": args.tokens, "rows": rows})  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Concurrent image chats on one vision worker: aggregate tokens/s, time to first token and
inter-token latency at 1, 4 and 8 concurrent streaming clients, through our stack with the
batched engine, through our stack with the engine before batching (`VISION_BATCH=0`: one
forward pass per job), and through stock `mlx_vlm.server`, on the same model, prompts and
machine, level by level in one run.

    make bench-vision      (or: PEER_PYTHON=.venv-peer/bin/python .venv/bin/python bench/vision.py
                            [--shape tiny|qwen2.5-vl-7b] [--levels 1 4 8] [--max-tokens 64])

mlx_vlm.server needs all of mlx-vlm's dependencies, which the worker's venv leaves out: it runs
with PEER_PYTHON (`make bench-vision` makes .venv-peer for it), else with VISION_PYTHON.

The model is worker_vision/tiny.py's random-weight Qwen2.5-VL in the chosen shape (`tiny`:
seconds on a CPU; `qwen2.5-vl-7b`: the real 7B's shape, 4-bit, for a GPU), built once under
--models-dir. Every request carries an image of its own (a colour no other request has, so
no cache helps anyone) and a question, and decodes greedily to --max-tokens (the random
model cannot end early). Each level starts with an unmeasured round on each server. Prints a
table and writes bench/results/vision-<shape>-<time>.json whose rows carry `concurrency`,
`vs_interleaved` and `vs_mlx_vlm_server`.
"""

from __future__ import annotations

import argparse
import base64
import io
import os
import subprocess
import sys
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RESULTS, ROOT, bench_stack, device_name, write_result
from concurrency import compare_levels, run_level, start_peer

from tests.support import VISION_PYTHON

SIDE = 448
"""Pixels per image side: 448² is 256 image tokens for Qwen2.5-VL (28-pixel merged patches)."""


def text_chat(round_no: int, i: int) -> list[dict]:
    """--no-images: the same engine and language model without the vision tower."""
    return [{"role": "user", "content": f"Request {round_no}-{i}: describe a picture in detail."}]


def image_chat(round_no: int, i: int) -> list[dict]:
    colour = ((37 * i + 11 * round_no) % 256, (91 * i + 7 * round_no) % 256, (53 * round_no + 5 * i) % 256)
    buffer = io.BytesIO()
    Image.new("RGB", (SIDE, SIDE), colour).save(buffer, format="PNG")
    uri = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    return [
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": uri}},
                {"type": "text", "text": f"Request {round_no}-{i}: describe this picture in detail."},
            ],
        }
    ]


BUILDERS = {"tiny": "worker_vision.tiny", "qwen2.5-vl-7b": "worker_vision.tiny",
            "qwen2.5-vl-7b-hd64": "worker_vision.tiny", "gemma-3-4b": "worker_vision.tiny_gemma3"}  # fmt: skip
"""Each --shape's builder (random weights in that model's shape)."""


def build_model(models_dir: Path, shape: str) -> str:
    name = "tiny-vision" if shape == "tiny" else f"bench-{shape}"
    if not (models_dir / name).exists():
        builder = BUILDERS[shape]
        subprocess.run([str(VISION_PYTHON), "-m", builder, str(models_dir / name), "--shape", shape], check=True)
    return name


def start_mlx_vlm_server(model_dir: Path, log: Path) -> tuple[subprocess.Popen, str]:
    peer = os.environ.get("PEER_PYTHON") or str(VISION_PYTHON)
    argv = [peer, "-m", "mlx_vlm.server", "--model", str(model_dir)]
    return start_peer(argv, log, "mlx_vlm.server", "/health", 600, env={**os.environ, "HF_HUB_OFFLINE": "1"})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", default="tiny", choices=sorted(BUILDERS))
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2, help="rounds per level and server")
    parser.add_argument("--models-dir", type=Path, default=ROOT / "var" / "models")
    parser.add_argument("--skip-reference", action="store_true", help="leave mlx_vlm.server out")
    parser.add_argument("--no-images", action="store_true", help="text-only chats to the vision model")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    args.models_dir.mkdir(parents=True, exist_ok=True)
    model = build_model(args.models_dir, args.shape)
    interleaved = f"{model}-interleaved"  # the same weights under a name of its own: its own queues
    if not (args.models_dir / interleaved).exists():
        (args.models_dir / interleaved).symlink_to(args.models_dir / model)
    capacity = max(args.levels)
    with bench_stack(str(args.models_dir)) as (stack, url, env):
        stack.start_vision_worker(model, WORKER_CAPACITY=capacity)
        stack.start_vision_worker(interleaved, VISION_BATCH=0, WORKER_CAPACITY=capacity)
        servers = {"ours": (url, model), "ours-interleaved": (url, interleaved)}
        reference = None
        if not args.skip_reference:
            reference, ref_url = start_mlx_vlm_server(args.models_dir / model, stack.logs / "mlx_vlm_server.log")
            servers["mlx_vlm.server"] = (ref_url, str(args.models_dir / model))
        try:
            chat = text_chat if args.no_images else image_chat
            for server_url, name in servers.values():  # warm-up, not counted
                run_level(server_url, name, 2, 8, round_no=-1, messages=chat)
            rows = compare_levels(servers, args.levels, args.rounds, args.max_tokens, messages=chat)
        finally:
            if reference is not None:
                reference.terminate()
                reference.wait(30)
    report(args, rows)
    return 0


def report(args, rows: list[dict]) -> None:
    device = device_name()
    images = "no images" if args.no_images else f"one {SIDE}x{SIDE} image each"
    print(f"\nshape {args.shape}, {images}, {args.max_tokens} tokens, greedy, {args.rounds} rounds, on {device}")
    print(
        f"{'server':<17} {'clients':>7} {'agg tok/s':>10} {'TTFT p50':>9} {'TTFT p95':>9} "
        f"{'ITL p50':>8} {'vs inter':>8} {'vs vlm':>7}"
    )
    for row in rows:
        same = {r["server"]: r["aggregate_tok_s"] for r in rows if r["concurrency"] == row["concurrency"]}
        row["vs_interleaved"] = row["aggregate_tok_s"] / same["ours-interleaved"] if same["ours-interleaved"] else None
        ref = same.get("mlx_vlm.server")
        row["vs_mlx_vlm_server"] = row["aggregate_tok_s"] / ref if ref else None
        print(
            f"{row['server']:<17} {row['concurrency']:>7} {row['aggregate_tok_s']:>10.1f} "
            f"{row['ttft_ms_p50'] or 0:>8.0f}ms {row['ttft_ms_p95'] or 0:>7.0f}ms {row['itl_ms_p50'] or 0:>6.1f}ms "
            f"{row['vs_interleaved'] or 0:>8.2f} {row['vs_mlx_vlm_server'] or 0:>7.2f}"
        )
    write_result(
        args.out,
        f"vision-{args.shape}" + ("-no-images" if args.no_images else ""),
        {
            "bench": "vision",
            "shape": args.shape,
            "images": not args.no_images,
            "max_tokens": args.max_tokens,
            "rounds": args.rounds,
            "rows": rows,
        },
    )


if __name__ == "__main__":
    sys.exit(main())

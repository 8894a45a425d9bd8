"""What the tiny random-weight model builders share (worker_vision/tiny*.py,
worker_embedding/tiny.py): writing a model directory so that a half-written one never looks
complete, and the command line `python -m <builder> OUTDIR [--seed N] [--<option> ...]`."""

from __future__ import annotations

import argparse
import json
import shutil
import time
from collections.abc import Callable, Iterable
from pathlib import Path


def write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=1, ensure_ascii=False))


def save_mlx(path: Path, weights: dict) -> None:
    import mlx.core as mx

    mx.save_safetensors(str(path), weights, metadata={"format": "mlx"})


def write_model(
    out_dir: Path, make: Callable[[Path], tuple[dict, dict]], save: Callable[[Path, dict], None] = save_mlx
) -> Path:
    """Build the model in `<out_dir>.partial` — `make(partial)` writes its tokenizer and
    processor files there and returns (config, weights) — save both, then rename it into place."""
    out_dir = Path(out_dir)
    partial = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    config, weights = make(partial)
    save(partial / "model.safetensors", weights)
    write_json(partial / "config.json", config)
    shutil.rmtree(out_dir, ignore_errors=True)
    partial.rename(out_dir)
    return out_dir


def cli(argv: list[str] | None, module: str, doc: str, build: Callable[..., Path], **options: Iterable[str]) -> int:
    """The builder's command line: OUTDIR, --seed, and one `--NAME` choice per option (its
    first choice the default), passed to `build` as keywords."""
    parser = argparse.ArgumentParser(prog=f"python -m {module}", description=doc.split("\n")[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    for name, choices in options.items():
        listed = list(choices)
        parser.add_argument(f"--{name}", choices=listed, default=listed[0])
    args = parser.parse_args(argv)
    start = time.perf_counter()
    path = build(args.out_dir, args.seed, **{name: getattr(args, name) for name in options})
    print(f"wrote {path} in {time.perf_counter() - start:.1f} s")
    return 0

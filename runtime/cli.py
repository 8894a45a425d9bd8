"""The command line every worker kind shares: `python -m worker_<kind> --model REF
[--capacity N] [--keep-alive S]`. Each kind brings its default capacity and how to build its
engine; the checks, logging setup and `serve` call live here once."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, MutableMapping
from typing import Any

from contract.keys import Kind
from contract.modelref import InvalidModelRef, parse_model_ref
from contract.settings import Settings
from runtime.worker import serve

MAX_CAPACITY = 256

EngineFactory = Callable[[str, Settings, int], Any]
"""(model reference, settings, capacity) -> the loaded engine; imports mlx when called."""


def apply_mlx_settings(settings: Settings, environ: MutableMapping[str, str]) -> None:
    """MLX's own switches that our settings decide, set before anything imports MLX: its CUDA
    attention reads MLX_CUDA_USE_CUDNN_SDPA once, at its first use (CUDNN_ATTENTION)."""
    environ["MLX_CUDA_USE_CUDNN_SDPA"] = "1" if settings.cudnn_attention else "0"


def run_worker(
    kind: Kind,
    argv: list[str] | None,
    *,
    description: str,
    default_capacity: Callable[[Settings], int],
    capacity_help: str,
    make_engine: EngineFactory,
) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m worker_{kind}", description=description)
    parser.add_argument(
        "--model", required=True, help="Hugging Face repo id (org/name) or a directory name under MODELS_DIR"
    )
    parser.add_argument("--capacity", type=int, default=None, help=capacity_help)
    parser.add_argument(
        "--keep-alive",
        type=int,
        default=-1,
        metavar="SECONDS",
        help="stop after this many idle seconds (default -1: never)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = Settings()
    apply_mlx_settings(settings, os.environ)
    capacity = args.capacity or default_capacity(settings)
    if not 1 <= capacity <= MAX_CAPACITY:
        return _usage_error(f"--capacity must be between 1 and {MAX_CAPACITY}")
    if args.keep_alive < -1:
        return _usage_error("--keep-alive must be -1 (never) or at least 0")
    try:
        model = parse_model_ref(args.model, settings.model_roots).name  # its one canonical name
    except InvalidModelRef as exc:
        # A reference that can never be valid is a usage error, not a load failure to retry.
        return _usage_error(str(exc))
    return serve(
        settings,
        model,
        kind,
        lambda: make_engine(model, settings, capacity),
        capacity,
        keep_alive=args.keep_alive,
    )


def _usage_error(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2

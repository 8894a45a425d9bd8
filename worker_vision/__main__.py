"""`python -m worker_vision --model REF`: one long-lived worker serving one mlx-vlm model.

Its jobs run concurrently but not in one batched forward pass (see worker_vision/engine.py):
each step costs one forward pass per running job, so the default capacity is small (4), not
WORKER_CAPACITY, which sizes the text worker's shared batch.
"""
from __future__ import annotations

import argparse
import logging
import sys

from jobs.keys import Kind
from jobs.modelref import InvalidModelRef, parse_model_ref
from jobs.settings import Settings
from jobs.worker import serve

DEFAULT_CAPACITY = 4
"""Jobs interleaved at once: a step advances each by one token with its own forward pass,
so every extra job slows the others' tokens instead of riding along in a batch."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m worker_vision", description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True,
                        help="Hugging Face repo id (org/name) or a directory name under MODELS_DIR")
    parser.add_argument("--capacity", type=int, default=None,
                        help=f"jobs interleaved at once (default: {DEFAULT_CAPACITY}; "
                             "no shared batch, so WORKER_CAPACITY does not apply)")
    parser.add_argument("--keep-alive", type=int, default=-1, metavar="SECONDS",
                        help="stop after this many idle seconds (default -1: never)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = Settings()
    capacity = args.capacity or DEFAULT_CAPACITY
    if not 1 <= capacity <= 256:
        print("error: --capacity must be between 1 and 256", file=sys.stderr)
        return 2
    if args.keep_alive < -1:
        print("error: --keep-alive must be -1 (never) or at least 0", file=sys.stderr)
        return 2
    try:
        parse_model_ref(args.model, settings.model_roots)
    except InvalidModelRef as exc:
        # A reference that can never be valid is a usage error, not a load failure to retry.
        print(f"error: {exc}", file=sys.stderr)
        return 2

    def load():
        from .engine import VisionEngine  # imports mlx and mlx-vlm; kept out of --help
        from .loading import load_vision_model

        return VisionEngine(load_vision_model(args.model, settings), max_images=settings.max_images)

    return serve(settings, args.model, Kind.VISION, load, capacity, keep_alive=args.keep_alive)


if __name__ == "__main__":
    sys.exit(main())

"""`python -m worker_text --model REF`: one long-lived worker serving one mlx-lm model."""
from __future__ import annotations

import argparse
import logging
import sys

from jobs.keys import Kind
from jobs.modelref import InvalidModelRef, parse_model_ref
from jobs.settings import Settings
from jobs.worker import serve


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m worker_text", description=__doc__)
    parser.add_argument("--model", required=True,
                        help="Hugging Face repo id (org/name) or a directory name under MODELS_DIR")
    parser.add_argument("--capacity", type=int, default=None,
                        help="jobs run at once in one batch (default: WORKER_CAPACITY, 8)")
    parser.add_argument("--keep-alive", type=int, default=-1, metavar="SECONDS",
                        help="stop after this many idle seconds (default -1: never)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = Settings()
    capacity = args.capacity or settings.worker_capacity
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
        from .engine import TextEngine  # imports mlx; kept out of --help
        from .loading import load_text_model

        return TextEngine(load_text_model(args.model, settings), capacity, settings.prompt_cache_bytes)

    return serve(settings, args.model, Kind.TEXT, load, capacity, keep_alive=args.keep_alive)


if __name__ == "__main__":
    sys.exit(main())

"""`python -m worker_text --model REF`: one long-lived worker serving one mlx-lm model."""

from __future__ import annotations

import sys

from contract.keys import Kind
from contract.settings import Settings
from runtime.cli import run_worker


def make_engine(model: str, settings: Settings, capacity: int):
    from .engine import TextEngine  # imports mlx; kept out of --help
    from .loading import load_text_model

    return TextEngine(
        load_text_model(model, settings), capacity, settings.prompt_cache_bytes, prefill_chunk=settings.prefill_chunk
    )


def main(argv: list[str] | None = None) -> int:
    return run_worker(
        Kind.TEXT,
        argv,
        description=__doc__,
        make_engine=make_engine,
        default_capacity=lambda settings: settings.worker_capacity,
        capacity_help="jobs run at once in one batch (default: WORKER_CAPACITY, 8)",
    )


if __name__ == "__main__":
    sys.exit(main())

"""`python -m worker_embedding --model REF`: one long-lived worker serving one embedding model."""

from __future__ import annotations

import sys

from contract.keys import Kind
from contract.settings import Settings
from runtime.cli import run_worker


def make_engine(model: str, settings: Settings, capacity: int):
    from .engine import EmbedEngine  # imports mlx; kept out of --help
    from .loading import load_embedding_model

    return EmbedEngine(load_embedding_model(model, settings))


def main(argv: list[str] | None = None) -> int:
    return run_worker(
        Kind.EMBEDDING,
        argv,
        description=__doc__,
        make_engine=make_engine,
        default_capacity=lambda settings: settings.worker_capacity,
        capacity_help="requests taken at once (default: WORKER_CAPACITY, 8); their inputs share batches",
    )


if __name__ == "__main__":
    sys.exit(main())

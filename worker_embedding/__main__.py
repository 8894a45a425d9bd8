"""`python -m worker_embedding --model REF`: one long-lived worker serving one embedding model."""

from __future__ import annotations

import logging
import sys

from contract.keys import Kind
from contract.settings import Settings
from runtime.cli import run_worker


def make_engine(model: str, settings: Settings, capacity: int):
    from mlx_common.cpu_blas import describe, on_cpu  # imports mlx; kept out of --help

    from .engine import EmbedEngine
    from .loading import load_embedding_model

    if on_cpu():
        logging.getLogger("mis.loading").info(describe())
    return EmbedEngine(load_embedding_model(model, settings))


def main(argv: list[str] | None = None) -> int:
    if argv is None:  # run as a program: on a Linux CPU, OpenBLAS preloaded by a re-exec
        from mlx_common.cpu_blas import start_worker_on_blas

        if (status := start_worker_on_blas()) is not None:
            return status
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

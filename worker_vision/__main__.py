"""`python -m worker_vision --model REF`: one long-lived worker serving one mlx-vlm model.

Its jobs run concurrently but not in one batched forward pass (see worker_vision/engine.py):
each step costs one forward pass per running job, so the default capacity is small (4), not
WORKER_CAPACITY, which sizes the text worker's shared batch.
"""

from __future__ import annotations

import sys

from contract.keys import Kind
from contract.settings import Settings
from runtime.cli import run_worker

DEFAULT_CAPACITY = 4
"""Jobs interleaved at once: a step advances each by one token with its own forward pass,
so every extra job slows the others' tokens instead of riding along in a batch."""


def make_engine(model: str, settings: Settings, capacity: int):
    from .engine import VisionEngine  # imports mlx and mlx-vlm; kept out of --help
    from .loading import load_vision_model

    return VisionEngine(
        load_vision_model(model, settings), max_images=settings.max_images, prefill_chunk=settings.prefill_chunk
    )


def main(argv: list[str] | None = None) -> int:
    return run_worker(
        Kind.VISION,
        argv,
        description=__doc__.split("\n")[0],
        make_engine=make_engine,
        default_capacity=lambda settings: DEFAULT_CAPACITY,
        capacity_help=f"jobs interleaved at once (default: {DEFAULT_CAPACITY}; "
        "no shared batch, so WORKER_CAPACITY does not apply)",
    )


if __name__ == "__main__":
    sys.exit(main())

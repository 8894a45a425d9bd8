"""`python -m worker_vision --model REF`: one long-lived worker serving one mlx-vlm model.

Its jobs decode in one batched forward pass per step (worker_vision/batch.py), so it runs
WORKER_CAPACITY jobs at once, as a text worker does; with VISION_BATCH=0 each job has a pass of
its own and the default capacity is INTERLEAVED_CAPACITY.
"""

from __future__ import annotations

import sys

from contract.keys import Kind
from contract.settings import Settings
from runtime.cli import run_worker

INTERLEAVED_CAPACITY = 4
"""Jobs at once with VISION_BATCH=0: a step advances each by one token with its own forward
pass, so every extra job slows the others' tokens instead of riding along in a batch."""


def make_engine(model: str, settings: Settings, capacity: int):
    from .engine import VisionEngine  # imports mlx and mlx-vlm; kept out of --help
    from .loading import load_vision_model

    return VisionEngine(
        load_vision_model(model, settings),
        max_images=settings.max_images,
        prefill_chunk=settings.prefill_chunk,
        batched=settings.vision_batch,
    )


def main(argv: list[str] | None = None) -> int:
    return run_worker(
        Kind.VISION,
        argv,
        description=__doc__.split("\n")[0],
        make_engine=make_engine,
        default_capacity=lambda settings: settings.worker_capacity if settings.vision_batch else INTERLEAVED_CAPACITY,
        capacity_help=f"jobs at once (default: WORKER_CAPACITY; {INTERLEAVED_CAPACITY} with VISION_BATCH=0)",
    )


if __name__ == "__main__":
    sys.exit(main())

"""`Done`: what a job function returns when its job needs no engine.

A batching worker's job functions normally return an engine request (runtime/batching.py). Some
jobs are bookkeeping: rendering a document's pages and fanning them out, assembling a
document's or a batch's results once their page/line jobs ended. Their job function does
the work when it is called and returns `Done(value)`; the worker then finalizes the job at
once with rq's own success path (result stored, dependents enqueued), without taking an
engine slot. A job function that raises fails its job as any refused payload does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Done:
    value: Any = None
    """The job's rq result (JSON-clean)."""

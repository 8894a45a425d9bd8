"""`Done` and `Later`: what a job function returns when its job needs no engine.

A batching worker's job functions normally return an engine request (runtime/batching.py). Some
jobs are bookkeeping: assembling a document's or a batch's results once their page/line jobs
ended. Their job function does the work when it is called and returns `Done(value)`; the
worker then finalizes the job at once with rq's own success path (result stored, dependents
enqueued), without taking an engine slot. A job function that raises fails its job as any
refused payload does.

Work that may take seconds (rendering a document's pages) must not hold the admission loop,
which admits every chat: its job function checks the payload and returns `Later(work)`; the
worker runs `work()` in a side thread and finalizes the job with the `Done` it returns, or
fails it with what it raises.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Done:
    value: Any = None
    """The job's rq result (JSON-clean)."""


@dataclass(frozen=True)
class Later:
    work: Callable[[], Done]
    """Runs outside rq's job context: it takes what it needs (a Context) from the job function."""

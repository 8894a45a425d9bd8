"""Every Redis key name and queue name this project uses, and nothing else formats one.

Queue names are rq queue names (rq adds its own `rq:queue:` prefix); model ids may contain
`/` (Hugging Face repo ids), which rq accepts.
"""
from __future__ import annotations

from enum import StrEnum


class Kind(StrEnum):
    TEXT = "text"
    VISION = "vision"


class Priority(StrEnum):
    """Workers listen to INTERACTIVE first, so chat is never stuck behind batch work."""

    INTERACTIVE = "interactive"
    BATCH = "batch"


class Keys:
    """Key names under one configurable prefix."""

    def __init__(self, prefix: str = "mis:"):
        self.prefix = prefix

    def stream(self, job_id: str) -> str:
        """The token stream a worker writes for one job."""
        return f"{self.prefix}stream:{job_id}"

    def cancel(self, job_id: str) -> str:
        """Set when a client asks to stop a job; workers poll it each step."""
        return f"{self.prefix}cancel:{job_id}"

    def blob(self, digest: str) -> str:
        """Validated bytes (an image, a document page) under their sha256, with a TTL."""
        return f"{self.prefix}blob:{digest}"

    def worker(self, worker_name: str) -> str:
        """Registry hash of one worker (expires unless heartbeats refresh it)."""
        return f"{self.prefix}worker:{worker_name}"

    @property
    def workers(self) -> str:
        """Sorted set of worker names scored by last heartbeat time."""
        return f"{self.prefix}workers"


def queue_name(kind: Kind, model_id: str, priority: Priority) -> str:
    return f"{kind}:{model_id}:{priority}"


def queue_names(kind: Kind, model_id: str) -> list[str]:
    """A worker's queues, in the order it serves them."""
    return [queue_name(kind, model_id, p) for p in (Priority.INTERACTIVE, Priority.BATCH)]

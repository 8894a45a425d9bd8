"""Every Redis key name and queue name this project uses, and nothing else formats one.

Queue names are rq queue names (rq adds its own `rq:queue:` prefix); model ids may contain
`/` (Hugging Face repo ids), which rq accepts.
"""

from __future__ import annotations

from enum import StrEnum


class Kind(StrEnum):
    TEXT = "text"
    VISION = "vision"
    EMBEDDING = "embedding"


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

    def response(self, job_id: str) -> str:
        """One stored response of the Responses API (api/responses.py): its request, input
        items and the conversation before them, as JSON; its output is the job's stream."""
        return f"{self.prefix}response:{job_id}"

    def blob(self, digest: str) -> str:
        """Validated bytes (an image, a document page) under their sha256, with a TTL."""
        return f"{self.prefix}blob:{digest}"

    def document(self, doc_id: str) -> str:
        """Hash of one document: its request, status, page jobs and per-page results
        (work/documents.py), kept RESULTS_TTL."""
        return f"{self.prefix}document:{doc_id}"

    def file(self, file_id: str) -> str:
        """Hash of one file of the Batch API: its bytes and its metadata, kept RESULTS_TTL."""
        return f"{self.prefix}file:{file_id}"

    def batch(self, batch_id: str) -> str:
        """Hash of one batch of the Batch API (work/batches.py), kept RESULTS_TTL."""
        return f"{self.prefix}batch:{batch_id}"

    def held_prefix(self, model_id: str, digest: str) -> str:
        """Which worker holds this message prefix of a conversation with this model (its
        name), expiring after PREFIX_TTL (contract/prefixes.py)."""
        return f"{self.prefix}held:{model_id}:{digest}"

    @property
    def batches(self) -> str:
        """Sorted set of batch ids scored by creation time: `GET /v1/batches` lists from it
        (ids whose batch has expired are dropped as they are met)."""
        return f"{self.prefix}batches"

    def autoload(self, model_id: str) -> str:
        """Set while a load that a chat request asked for is pending: the id of its command."""
        return f"{self.prefix}autoload:{model_id}"

    def worker(self, worker_name: str) -> str:
        """Registry hash of one worker (expires unless heartbeats refresh it)."""
        return f"{self.prefix}worker:{worker_name}"

    @property
    def workers(self) -> str:
        """Sorted set of worker names scored by last heartbeat time."""
        return f"{self.prefix}workers"

    def commands(self, kind: Kind) -> str:
        """Stream of load commands for the managers of one kind (consumer group `managers`)."""
        return f"{self.prefix}commands:{kind}"

    def command(self, command_id: str) -> str:
        """Status hash of one command (contract.commands.CommandStatus), with a TTL."""
        return f"{self.prefix}command:{command_id}"

    def manager(self, name: str) -> str:
        """Registry hash of one manager (expires unless heartbeats refresh it)."""
        return f"{self.prefix}manager:{name}"

    @property
    def managers(self) -> str:
        """Sorted set of manager names scored by last heartbeat time."""
        return f"{self.prefix}managers"

    def unload(self, model_id: str) -> str:
        """Unload request for a model's workers: JSON {"before": time, "cancel": bool}."""
        return f"{self.prefix}unload:{model_id}"

    # Prometheus metrics (api/metrics.py): hashes every API process increments; their fields
    # are JSON arrays of label values, bounded by routes, statuses and served models.
    @property
    def metrics_requests(self) -> str:
        """HTTP request counts by [url rule, method, status]."""
        return f"{self.prefix}metrics:requests"

    @property
    def metrics_ttft(self) -> str:
        """Time-to-first-token histogram: [model, bucket bound] counts and [model, "sum"]."""
        return f"{self.prefix}metrics:ttft"

    @property
    def metrics_itl(self) -> str:
        """Inter-token gap histogram, fields as in `metrics_ttft`."""
        return f"{self.prefix}metrics:itl"

    @property
    def metrics_tokens(self) -> str:
        """Generated completion tokens by [model]."""
        return f"{self.prefix}metrics:tokens"


def queue_name(kind: Kind, model_id: str, priority: Priority) -> str:
    return f"{kind}:{model_id}:{priority}"


def parse_queue_name(name: str) -> tuple[Kind, str, Priority] | None:
    """(kind, model id, priority) of one of our queue names; None for any other queue."""
    kind, _, rest = name.partition(":")
    model, _, priority = rest.rpartition(":")
    if kind not in set(Kind) or priority not in set(Priority) or not model:
        return None
    return Kind(kind), model, Priority(priority)


def queue_names(kind: Kind, model_id: str) -> list[str]:
    """A worker's queues, in the order it serves them."""
    return [queue_name(kind, model_id, p) for p in (Priority.INTERACTIVE, Priority.BATCH)]

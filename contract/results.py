"""The outcome of one chat job, read back from its token stream and rq record.

Documents and batches copy each page's or line's outcome into their own record (kept
RESULTS_TTL) before the job's stream expires (RESULT_TTL after the job ends). A job that
was retried (its worker died, or it failed with retries left) wrote its stream more than
once: only the entries after its last `start` belong to the attempt that counts.
"""

from __future__ import annotations

from enum import StrEnum

import redis
from pydantic import BaseModel
from rq.exceptions import AbandonedJobError
from rq.job import Job, JobStatus

from contract.keys import Keys
from contract.queues import WAITING, fetch_job
from contract.stream import Event, EventType, StreamReader, join_calls

STATUS_BY_CODE = {
    "context_length_exceeded": 400,
    "invalid_value": 400,
    "invalid_response_format": 400,  # a grammar this model's vocabulary cannot follow
    "invalid_image": 400,  # decoded only by the worker (api/images.py)
    "kv_budget_exceeded": 400,  # prompt + max_tokens beyond the worker's memory (worker_text/memory.py)
    "worker_died": 503,
    "model_unavailable": 503,
    "job_expired": 503,
    "job_cancelled": 503,
    "job_timeout": 504,
    "worker_shutdown": 503,
    "redis_unavailable": 503,
    "blob_expired": 503,
}


"""The HTTP status of each error code a job can end with: the API answers with it, a batch
line's error entry carries it. Any other code is a 500."""


def http_status(code: str | None) -> int:
    return STATUS_BY_CODE.get(code or "", 500)


class ResultStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELED = "canceled"


FINAL = frozenset({ResultStatus.COMPLETED, ResultStatus.FAILED, ResultStatus.CANCELED})


class JobResult(BaseModel):
    status: ResultStatus
    text: str = ""
    reasoning: str = ""
    tool_calls: list[dict] = []
    finish_reason: str | None = None
    usage: dict | None = None
    error: dict | None = None
    """OpenAI-style {code, message} when the job failed."""
    vectors: dict | None = None
    """An embedding job's `done` data (count, dimensions, base64 float32 embeddings)."""

    def message(self) -> dict:
        return assistant_message(self.text, self.reasoning, self.tool_calls)

    @property
    def final(self) -> bool:
        return self.status in FINAL


def ending_without_event(job: Job | None) -> Event | None:
    """The one rule for a job that rq ended without a terminal stream event (its worker died,
    or it was cancelled while queued): the ending its client gets. rq's FAILED is an error;
    a job rq failed as abandoned is `worker_died`, whoever noticed the death first; CANCELED and
    STOPPED (a stop asked for on purpose) are cancellations. None while the job
    may still write its own ending, and for a job rq no longer knows (each caller says what
    an expired job means to it). Used by the relay (api/relay.py), stored completions
    (api/stored.py) and the results of documents and batches (read_result)."""
    status = job.get_status(refresh=False) if job is not None else None
    if job is not None and status == JobStatus.FAILED and _abandoned(job):
        return worker_died()
    if status == JobStatus.FAILED:
        return Event(
            EventType.ERROR,
            data={"code": "generation_failed", "message": "the job failed in its worker"},
        )
    if status in (JobStatus.CANCELED, JobStatus.STOPPED):
        return Event(EventType.CANCELLED)
    return None


def assistant_message(text: str, reasoning: str, tool_calls: list[dict]) -> dict:
    """An answer as OpenAI's `message`: no content (null) when it is only tool calls, and
    the thinking as `reasoning_content` when there was some. The API's answers and batch
    output lines both shape it here."""
    message: dict = {"role": "assistant", "content": text if text or not tool_calls else None, "refusal": None}
    if tool_calls:
        message["tool_calls"] = tool_calls
    if reasoning:
        message["reasoning_content"] = reasoning
    return message


def worker_died() -> Event:
    return Event(
        EventType.ERROR,
        data={"code": "worker_died", "message": "the worker running this job stopped responding; please retry"},
    )


def _abandoned(job: Job) -> bool:
    """rq failed the job because its worker stopped heart-beating (its abandoned-job cleanup,
    run by the API's relay or by any live worker's sweep, whichever comes first)."""
    result = job.latest_result()
    return result is not None and AbandonedJobError.__name__ in (result.exc_string or "")


def read_result(conn: redis.Redis, keys: Keys, job_id: str) -> JobResult:
    job = fetch_job(conn, job_id)
    status = job.get_status(refresh=False) if job is not None else None
    if status in WAITING:  # a retry puts a failed job back: its old stream is no answer yet
        return JobResult(status=ResultStatus.QUEUED)
    if status == JobStatus.STARTED:
        return JobResult(status=ResultStatus.RUNNING)
    events = StreamReader(conn, keys, job_id).read_all()
    starts = [i for i, e in enumerate(events) if e.type == EventType.START]
    events = events[starts[-1] :] if starts else events
    deltas = [e.data for e in events if e.type == EventType.DELTA]
    text = "".join(d.get("text", "") for d in deltas)
    ending = events[-1] if events and events[-1].is_terminal else ending_without_event(job)
    if ending is not None and ending.type == EventType.DONE:
        calls: dict[int, dict] = {}
        for delta in deltas:
            join_calls(calls, delta.get("tool_calls", []))
        return JobResult(
            status=ResultStatus.COMPLETED,
            text=text,
            reasoning="".join(d.get("reasoning", "") for d in deltas),
            tool_calls=[calls[i] for i in sorted(calls)],
            usage=ending.data.get("usage"),
            finish_reason=ending.data.get("finish_reason"),
            vectors=dict(ending.data) if "embeddings" in ending.data else None,
        )
    if ending is not None and ending.type == EventType.ERROR:
        return JobResult(
            status=ResultStatus.FAILED,
            text=text,
            error={"code": ending.data.get("code", "generation_failed"), "message": ending.data.get("message", "")},
        )
    if ending is not None and ending.type == EventType.CANCELLED:
        return JobResult(status=ResultStatus.CANCELED, text=text)
    return JobResult(
        status=ResultStatus.FAILED,
        error={"code": "result_expired", "message": "the job's result expired before it was recorded"},
    )

"""Batches of the OpenAI Batch API: one chat job per line, a finalizing job after them.

Lifecycle (OpenAI's statuses; `BatchStatus`, written only by `set_status`):

    in_progress ──finalize (every line job ended, failures allowed)──▶ finalizing ──▶ completed
    in_progress ──cancel──▶ cancelling ──▶ cancelled      (a file that fails validation: failed)

The API validates the input file and enqueues the lines (api/batches.py); each line is an
ordinary chat job on its model's batch queue (`Retry(max=2)`, like document pages). The
record (`Keys.batch`, RESULTS_TTL) holds the Batch object's fields and each line's
`custom_id` with its job id, or the error that kept it from running (a model nobody serves).
`finalize` — a bookkeeping job (runtime/done.py) any batching worker runs — reads every line's
outcome from its job's stream and writes the output and error files in OpenAI's format:
`{"id", "custom_id", "response": {"status_code", "request_id", "body"}, "error"}`.
"""
from __future__ import annotations

import json
import time
from enum import StrEnum

import redis
from rq import Queue, Retry
from rq.exceptions import InvalidJobOperation
from rq.job import Dependency, Job, JobStatus

from work import files
from work import records
from runtime.done import Done, job_context
from contract.keys import Keys, Kind, Priority, queue_name
from contract.payloads import ChatJob
from contract.queues import CHAT_FUNC, batch_lifetimes, cancel_job, fetch_job, new_job_id
from contract.results import ResultStatus, read_result
from contract.settings import Settings

FINALIZE_FUNC = "work.batches.finalize"
LINE_RETRIES = 2
"""Extra attempts per line (a dead worker, a failed generation), as for document pages."""


class BatchStatus(StrEnum):
    VALIDATING = "validating"
    FAILED = "failed"
    IN_PROGRESS = "in_progress"
    FINALIZING = "finalizing"
    COMPLETED = "completed"
    EXPIRED = "expired"
    CANCELLING = "cancelling"
    CANCELLED = "cancelled"


TERMINAL = frozenset({BatchStatus.FAILED, BatchStatus.COMPLETED, BatchStatus.EXPIRED, BatchStatus.CANCELLED})


def set_status(conn: redis.Redis, keys: Keys, batch_id: str, status: BatchStatus, **fields) -> bool:
    return records.write_status(conn, keys.batch(batch_id), status.value, TERMINAL, **fields)


def load(conn: redis.Redis, keys: Keys, batch_id: str) -> dict | None:
    return records.read(conn, keys.batch(batch_id))


def enqueue_finalize(conn: redis.Redis, settings: Settings, batch_id: str, kind: Kind, model: str,
                     job_ids: list[str]) -> None:
    queue = Queue(queue_name(kind, model, Priority.BATCH), connection=conn)
    depends = [j for j in Job.fetch_many(job_ids, connection=conn) if j is not None]  # one round trip
    job = queue.enqueue_call(FINALIZE_FUNC, kwargs={"payload": {"id": batch_id}}, job_id=new_job_id(),
                             depends_on=Dependency(jobs=depends, allow_failure=True), **batch_lifetimes(settings))
    conn.hset(Keys(settings.key_prefix).batch(batch_id), "finalize_job", json.dumps(job.id))


def finalize(payload: dict) -> Done:
    """Job function: every line job has ended; write the output and error files."""
    conn, keys, settings = job_context()
    record = load(conn, keys, payload["id"])
    if record is None or record["status"] != BatchStatus.IN_PROGRESS:
        return Done()  # cancelled: the cancel wrote the files
    if set_status(conn, keys, payload["id"], BatchStatus.FINALIZING):
        finish(conn, settings, payload["id"], BatchStatus.COMPLETED)
    return Done()


def finish(conn: redis.Redis, settings: Settings, batch_id: str, status: BatchStatus) -> None:
    """Build the output and error files from the lines' outcomes and end the batch."""
    keys = Keys(settings.key_prefix)
    record = load(conn, keys, batch_id)
    if record is None:
        return
    created = record["meta"].get("created_at", int(time.time()))
    output, errors, counts = [], [], {"total": len(record["lines"]), "completed": 0, "failed": 0}
    for line in record["lines"]:
        entry, ok = _output_line(conn, keys, line, created)
        (output if ok else errors).append(entry)
        counts["completed" if ok else "failed"] += 1
    ids = {}
    for name, lines in (("output_file_id", output), ("error_file_id", errors)):
        ids[name] = files.put(conn, keys, "".join(json.dumps(x) + "\n" for x in lines).encode(),
                              filename=f"{batch_id}_{name[:-8]}.jsonl", purpose="batch_output",
                              ttl=settings.results_ttl)["id"] if lines else None
    set_status(conn, keys, batch_id, status, request_counts=counts, **ids)


def _output_line(conn, keys: Keys, line: dict, created: int) -> tuple[dict, bool]:
    job_id = line.get("job_id")
    entry = {"id": f"batch_req_{job_id or new_job_id()}", "custom_id": line["custom_id"], "error": None}
    if job_id is None:
        error = line["error"]
        entry["response"] = {"status_code": error.get("status", 400), "request_id": None,
                             "body": {"error": _error_body(error)}}
        return entry, False
    result = read_result(conn, keys, job_id)
    request_id = f"chatcmpl-{job_id}"
    if result.status == ResultStatus.COMPLETED:
        body = {"id": request_id, "object": "chat.completion", "created": created, "model": line["model"],
                "choices": [{"index": 0, "message": {"role": "assistant", "content": result.text},
                             "logprobs": None, "finish_reason": result.finish_reason}],
                "usage": result.usage}
        entry["response"] = {"status_code": 200, "request_id": request_id, "body": body}
        return entry, True
    error = result.error or {"code": "cancelled" if result.status == ResultStatus.CANCELED else "not_finished",
                             "message": f"the request was {result.status.value} before it finished"}
    entry["response"] = {"status_code": 500, "request_id": request_id, "body": {"error": _error_body(error)}}
    return entry, False


def _error_body(error: dict) -> dict:
    return {"message": error.get("message", ""), "type": error.get("type", "invalid_request_error"),
            "param": error.get("param"), "code": error.get("code")}


def request_counts(conn: redis.Redis, record: dict) -> dict:
    """Lines done so far, from their jobs' rq statuses (the record's counts once it ended)."""
    if "request_counts" in record:
        return record["request_counts"]
    counts = {"total": len(record["lines"]), "completed": 0, "failed": 0}
    ids = [line["job_id"] for line in record["lines"] if line.get("job_id")]
    counts["failed"] = len(record["lines"]) - len(ids)  # lines that never ran
    for job in Job.fetch_many(ids, connection=conn):  # one round trip
        status = job.get_status(refresh=False) if job is not None else None
        if status in (JobStatus.FAILED, JobStatus.CANCELED, JobStatus.STOPPED):
            counts["failed"] += 1
        elif status == JobStatus.FINISHED:
            counts["completed"] += 1
    return counts


def cancel(conn: redis.Redis, settings: Settings, batch_id: str) -> None:
    """Cancel the lines not yet done; the files then hold what finished (and the rest as errors)."""
    keys = Keys(settings.key_prefix)
    if not set_status(conn, keys, batch_id, BatchStatus.CANCELLING):
        return
    record = load(conn, keys, batch_id)
    finalize_job = fetch_job(conn, record["finalize_job"]) if record.get("finalize_job") else None
    if finalize_job is not None and finalize_job.get_status(refresh=False) == JobStatus.DEFERRED:
        try:
            finalize_job.cancel()
        except InvalidJobOperation:
            pass
    for line in record["lines"]:
        if line.get("job_id"):
            cancel_job(conn, settings, line["job_id"])
    finish(conn, settings, batch_id, BatchStatus.CANCELLED)


def enqueue_line(conn: redis.Redis, settings: Settings, payload: ChatJob, kind: Kind) -> str:
    """One line's chat job on its model's batch queue (no depth limit: batch work waits)."""
    queue = Queue(queue_name(kind, payload.model, Priority.BATCH), connection=conn)
    job = queue.enqueue_call(CHAT_FUNC[kind], kwargs={"payload": payload.model_dump(mode="json")},
                             job_id=new_job_id(), retry=Retry(max=LINE_RETRIES), **batch_lifetimes(settings))
    return job.id

"""Batches of the OpenAI Batch API: one chat job per line, a finalizing job after them.

Lifecycle (OpenAI's statuses; `BatchStatus`, written only by `set_status`):

    in_progress ──finalize (every line job ended, failures allowed)──▶ finalizing ──▶ completed
    in_progress ──cancel──▶ cancelling ──▶ cancelled      (a file that fails validation: failed)

The API validates the input file and enqueues the lines (api/batches.py); each line is an
ordinary chat job on its model's batch queue (`Retry(max=2)`, like document pages). The
record (`Keys.batch`, RESULTS_TTL) holds the Batch object's fields and each line's
`custom_id` with its job id, or the error that kept it from running (a model nobody serves).
`finalize` — a bookkeeping job (contract/done.py) any batching worker runs — reads every line's
outcome from its job's stream and writes the output and error files in OpenAI's format:
`{"id", "custom_id", "response": {"status_code", "request_id", "body"}, "error"}`.
"""

from __future__ import annotations

import json
import time
from enum import StrEnum
from typing import cast

import redis
from rq.job import Job, JobStatus

from contract.context import Context
from contract.done import Done
from contract.embeddings import embedding_list
from contract.keys import Kind, Priority
from contract.payloads import ChatJob
from contract.queues import JobSpec, cancel_job, enqueue, new_job_id
from contract.results import ResultStatus, http_status, read_result
from work import files, records

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


def create(ctx: Context, batch_id: str, status: BatchStatus, **fields) -> None:
    records.create(ctx.conn, ctx.keys.batch(batch_id), status.value, ctx.settings.results_ttl, **fields)
    ctx.conn.zadd(ctx.keys.batches, {batch_id: time.time()})


def listed(ctx: Context, limit: int, after: str | None = None) -> tuple[list[str], bool]:
    """Up to `limit` kept batch ids, newest first, after the id `after`; and whether more
    follow. Ids whose record has expired are taken out of the index on the way."""
    start = 0
    if after is not None:
        rank = ctx.conn.zrevrank(ctx.keys.batches, after)
        start = 0 if rank is None else int(cast(int, rank)) + 1
    found: list[str] = []
    while len(found) <= limit:
        ids = [i.decode() for i in cast(list, ctx.conn.zrevrange(ctx.keys.batches, start, start + limit))]
        if not ids:
            break
        pipe = ctx.conn.pipeline(transaction=False)
        for batch_id in ids:
            pipe.exists(ctx.keys.batch(batch_id))
        alive = pipe.execute()
        gone = [i for i, live in zip(ids, alive, strict=True) if not live]
        if gone:
            ctx.conn.zrem(ctx.keys.batches, *gone)
        found += [i for i, live in zip(ids, alive, strict=True) if live]
        start += len(ids) - len(gone)
    return found[:limit], len(found) > limit


def set_status(ctx: Context, batch_id: str, status: BatchStatus, **fields) -> bool:
    """The one writer of a batch's status (work/records.py); False when it has ended already."""
    return records.write_status(ctx.conn, ctx.keys.batch(batch_id), status.value, TERMINAL, **fields)


def load(ctx: Context, batch_id: str) -> dict | None:
    return records.read(ctx.conn, ctx.keys.batch(batch_id))


def enqueue_line(ctx: Context, payload: ChatJob, kind: Kind) -> str:
    """One line's chat job on its model's batch queue (no depth limit: batch work waits)."""
    return enqueue(ctx, JobSpec.chat(payload, kind, priority=Priority.BATCH, retries=LINE_RETRIES)).id


def enqueue_finalize(ctx: Context, batch_id: str, kind: Kind, model: str, job_ids: list[str]) -> None:
    depends = [j for j in Job.fetch_many(job_ids, connection=ctx.conn) if j is not None]  # one round trip
    job = enqueue(ctx, JobSpec(FINALIZE_FUNC, {"id": batch_id}, kind, model, Priority.BATCH, after=depends))
    ctx.conn.hset(ctx.keys.batch(batch_id), "finalize_job", json.dumps(job.id))


def finalize(payload: dict) -> Done:
    """Job function: every line job has ended; write the output and error files."""
    ctx = Context.for_current_job()
    record = load(ctx, payload["id"])
    if record is None or record["status"] != BatchStatus.IN_PROGRESS:
        return Done()  # cancelled: the cancel wrote the files
    if set_status(ctx, payload["id"], BatchStatus.FINALIZING):
        finish(ctx, payload["id"], BatchStatus.COMPLETED)
    return Done()


def finish(ctx: Context, batch_id: str, status: BatchStatus) -> None:
    """Build the output and error files from the lines' outcomes and end the batch."""
    record = load(ctx, batch_id)
    if record is None:
        return
    created = record["meta"].get("created_at", int(time.time()))
    output: list[dict] = []
    errors: list[dict] = []
    counts = {"total": len(record["lines"]), "completed": 0, "failed": 0}
    for line in record["lines"]:
        entry, ok = _output_line(ctx, line, created)
        (output if ok else errors).append(entry)
        counts["completed" if ok else "failed"] += 1
    ids = {}
    for name, lines in (("output_file_id", output), ("error_file_id", errors)):
        ids[name] = (
            files.put(
                ctx.conn,
                ctx.keys,
                "".join(json.dumps(x) + "\n" for x in lines).encode(),
                filename=f"{batch_id}_{name[:-8]}.jsonl",
                purpose="batch_output",
                ttl=ctx.settings.results_ttl,
            )["id"]
            if lines
            else None
        )
    set_status(ctx, batch_id, status, request_counts=counts, **ids)


def _output_line(ctx: Context, line: dict, created: int) -> tuple[dict, bool]:
    job_id = line.get("job_id")
    entry = {"id": f"batch_req_{job_id or new_job_id()}", "custom_id": line["custom_id"], "error": None}
    if job_id is None:
        error = line["error"]
        entry["response"] = {
            "status_code": error.get("status", 400),
            "request_id": None,
            "body": {"error": _error_body(error)},
        }
        return entry, False
    result = read_result(ctx.conn, ctx.keys, job_id)
    request_id = f"chatcmpl-{job_id}"
    if result.status == ResultStatus.COMPLETED and result.vectors is not None:  # an /v1/embeddings line
        request_id = f"embd-{job_id}"
        body = embedding_list(line["model"], result.vectors, line.get("encoding_format", "float"))
        entry["response"] = {"status_code": 200, "request_id": request_id, "body": body}
        return entry, True
    if result.status == ResultStatus.COMPLETED:
        body = {
            "id": request_id,
            "object": "chat.completion",
            "created": created,
            "model": line["model"],
            "choices": [
                {
                    "index": 0,
                    "message": result.message(),
                    "logprobs": None,
                    "finish_reason": result.finish_reason,
                }
            ],
            "usage": result.usage,
        }
        entry["response"] = {"status_code": 200, "request_id": request_id, "body": body}
        return entry, True
    if result.status in (ResultStatus.CANCELED, ResultStatus.QUEUED, ResultStatus.RUNNING):
        # Never answered: as OpenAI writes a cancelled or expired batch's requests, no response.
        entry["response"] = None
        entry["error"] = {"code": "batch_cancelled", "message": f"the batch was cancelled before this request "
                          f"finished (it was {result.status.value})"}  # fmt: skip
        return entry, False
    error = result.error or {"code": "not_finished", "message": "the request ended without an answer"}
    entry["response"] = {"status_code": _status_of(error), "request_id": request_id,
                         "body": {"error": _error_body(error)}}  # fmt: skip
    return entry, False


def _status_of(error: dict) -> int:
    """The HTTP status the request had (a line refused by the API) or would have had."""
    return int(error["status"]) if "status" in error else http_status(error.get("code"))


def _error_body(error: dict) -> dict:
    return {
        "message": error.get("message", ""),
        "type": error.get("type", "invalid_request_error" if _status_of(error) < 500 else "server_error"),
        "param": error.get("param"),
        "code": error.get("code"),
    }


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


def cancel(ctx: Context, batch_id: str) -> None:
    """Cancel the lines not yet done; the files then hold what finished (and the rest as errors)."""
    if not set_status(ctx, batch_id, BatchStatus.CANCELLING):
        return
    record = load(ctx, batch_id)
    if record is None:
        return
    if record.get("finalize_job"):
        cancel_job(ctx, record["finalize_job"])  # waiting for the lines: taken off
    for line in record["lines"]:
        if line.get("job_id"):
            cancel_job(ctx, line["job_id"])
    finish(ctx, batch_id, BatchStatus.CANCELLED)

"""Documents: one vision chat job per page, an aggregating job that waits for all of them.

Lifecycle (`DocStatus`, written only by `set_status`):

    queued ──render job (worker_vision/pages.py)──▶ rendering ──fan_out──▶ running
    (uploaded images skip rendering: the API fans them out itself and the record starts running)
    running ──aggregate (all page jobs ended, failures allowed)──▶ completed | failed
            └─ with `combine`: aggregate enqueues a text chat job and `combined`, which ends it
    any unfinished state ──DELETE──▶ canceled

The record is one Redis hash (`Keys.document`), kept RESULTS_TTL: the request (`meta`), the
status, the page numbers and their job ids, and, once `aggregate` ran, every page's outcome
(`pages`) copied from the page jobs' streams, which expire an hour after each job. Page jobs
are ordinary vision chat jobs on the model's batch queue with `Retry(max=2)`: a page whose
worker died or that failed goes back to its queue twice before it counts as failed.
`aggregate` and `combined` are bookkeeping jobs (runtime/done.py) that any batching worker runs.
"""
from __future__ import annotations

import json
import time
from enum import StrEnum

import redis
from pydantic import BaseModel, Field
from rq import Queue, Retry
from rq.exceptions import InvalidJobOperation
from rq.job import Dependency

from work import records
from runtime.done import Done, job_context
from contract.keys import Keys, Kind, Priority, queue_name
from contract.payloads import ChatJob, ChatMessage, ImagePart, TextPart
from contract.queues import CHAT_FUNC, batch_lifetimes, cancel_job, fetch_job, new_job_id
from contract.results import FINAL, JobResult, ResultStatus, read_result
from contract.settings import Settings

RENDER_FUNC = "worker_vision.pages.render"
AGGREGATE_FUNC = "work.documents.aggregate"
COMBINED_FUNC = "work.documents.combined"
PAGE_RETRIES = 2
"""Extra attempts per page (a dead worker, a failed generation) before the page fails."""


class DocStatus(StrEnum):
    QUEUED = "queued"
    RENDERING = "rendering"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELED = "canceled"


TERMINAL = frozenset({DocStatus.COMPLETED, DocStatus.FAILED, DocStatus.CANCELED})


class DocumentJob(BaseModel):
    """A document's request: the payload of its render and aggregate jobs, and `meta` in its record."""

    id: str
    model: str
    prompt: str
    max_tokens: int
    dpi: int = 150
    page_numbers: list[int]
    """1-based numbers of the pages to read (a PDF's, or the uploaded images' order)."""
    source_blob: str | None = None
    """The uploaded PDF in the blob store; None when the pages were uploaded as images."""
    combine: str | None = None
    combine_model: str | None = None
    combine_kind: Kind = Kind.TEXT
    combine_max_tokens: int = 512
    created_at: int = Field(default_factory=lambda: int(time.time()))


class PageResult(JobResult):
    page: int


# ---- the record -----------------------------------------------------------------------------

def create(conn: redis.Redis, keys: Keys, settings: Settings, doc: DocumentJob, status: DocStatus) -> None:
    records.create(conn, keys.document(doc.id), status.value, settings.results_ttl,
                   meta=doc.model_dump(mode="json"), pages_total=len(doc.page_numbers))


def set_status(conn: redis.Redis, keys: Keys, doc_id: str, status: DocStatus, **fields) -> bool:
    """The one writer of a document's status (work/records.py); `fields` are written with it.
    False when the document has ended already (or expired): nothing was written."""
    return records.write_status(conn, keys.document(doc_id), status.value, TERMINAL, **fields)


def load(conn: redis.Redis, keys: Keys, doc_id: str) -> dict | None:
    record = records.read(conn, keys.document(doc_id))
    if record is None:
        return None
    record["status"] = DocStatus(record["status"])
    record["meta"] = DocumentJob.model_validate(record["meta"])
    return record


def status_of(conn: redis.Redis, keys: Keys, doc_id: str) -> DocStatus | None:
    value = conn.hget(keys.document(doc_id), "status")
    return DocStatus(value.decode()) if value else None


# ---- work -----------------------------------------------------------------------------------

def enqueue_render(conn: redis.Redis, settings: Settings, doc: DocumentJob) -> None:
    queue = Queue(queue_name(Kind.VISION, doc.model, Priority.BATCH), connection=conn)
    job = queue.enqueue_call(RENDER_FUNC, kwargs={"payload": doc.model_dump(mode="json")}, job_id=new_job_id(),
                             **batch_lifetimes(settings))
    conn.hset(Keys(settings.key_prefix).document(doc.id), "render_job", json.dumps(job.id))


def page_job(doc: DocumentJob, page: ImagePart) -> ChatJob:
    return ChatJob(model=doc.model, max_tokens=doc.max_tokens, messages=[
        ChatMessage(role="user", content=[page, TextPart(text=doc.prompt)])])


def fan_out(conn: redis.Redis, settings: Settings, doc: DocumentJob, pages: list[ImagePart]) -> list[str]:
    """One chat job per page on the model's batch queue, and the aggregating job after them."""
    keys = Keys(settings.key_prefix)
    queue = Queue(queue_name(Kind.VISION, doc.model, Priority.BATCH), connection=conn)
    ttls = batch_lifetimes(settings)
    specs = [Queue.prepare_data(CHAT_FUNC[Kind.VISION], kwargs={"payload": page_job(doc, p).model_dump(mode="json")},
                                job_id=new_job_id(), retry=Retry(max=PAGE_RETRIES), **ttls) for p in pages]
    page_ids = [spec.job_id for spec in specs]
    # Ids first, so a status read between the two enqueues already sees every page.
    if not set_status(conn, keys, doc.id, DocStatus.RUNNING, page_jobs=page_ids):
        return []  # cancelled meanwhile
    jobs = queue.enqueue_many(specs)
    aggregate = queue.enqueue_call(AGGREGATE_FUNC, kwargs={"payload": {"id": doc.id}}, job_id=new_job_id(),
                                   depends_on=Dependency(jobs=jobs, allow_failure=True), **ttls)
    conn.hset(keys.document(doc.id), "aggregate_job", json.dumps(aggregate.id))
    return page_ids


def page_results(conn: redis.Redis, keys: Keys, record: dict) -> list[PageResult]:
    """Every page's outcome: recorded ones from the record, the rest from their jobs."""
    if "pages" in record:
        return [PageResult.model_validate(p) for p in record["pages"]]
    numbers = record["meta"].page_numbers
    if "page_jobs" not in record:
        return [PageResult(page=n, status=ResultStatus.QUEUED) for n in numbers]
    return [_page(n, read_result(conn, keys, job_id)) for n, job_id in zip(numbers, record["page_jobs"], strict=True)]


def _page(number: int, result: JobResult) -> PageResult:
    return PageResult(page=number, **result.model_dump())


def aggregate(payload: dict) -> Done:
    """Job function: every page job has ended; copy their outcomes into the record."""
    conn, keys, settings = job_context()
    record = load(conn, keys, payload["id"])
    if record is None or record["status"] in TERMINAL:
        return Done()
    doc: DocumentJob = record["meta"]
    pages = page_results(conn, keys, record)
    done = [p for p in pages if p.status == ResultStatus.COMPLETED]
    dumped = [p.model_dump(mode="json") for p in pages]
    if not done:
        set_status(conn, keys, doc.id, DocStatus.FAILED, pages=dumped,
                   error={"code": "all_pages_failed", "message": "no page could be read"})
    elif doc.combine and doc.combine_model:
        set_status(conn, keys, doc.id, DocStatus.RUNNING, pages=dumped)
        _enqueue_combine(conn, keys, settings, doc, done)
    else:
        set_status(conn, keys, doc.id, DocStatus.COMPLETED, pages=dumped)
    return Done({"pages_completed": len(done)})


def _enqueue_combine(conn, keys: Keys, settings: Settings, doc: DocumentJob, pages: list[PageResult]) -> None:
    text = "\n\n".join(f"## Page {p.page}\n\n{p.text}" for p in pages)
    job = ChatJob(model=doc.combine_model, max_tokens=doc.combine_max_tokens,
                  messages=[ChatMessage(role="user", content=f"{doc.combine}\n\n{text}")])
    queue = Queue(queue_name(doc.combine_kind, doc.combine_model, Priority.BATCH), connection=conn)
    ttls = batch_lifetimes(settings)
    combine = queue.enqueue_call(CHAT_FUNC[doc.combine_kind], kwargs={"payload": job.model_dump(mode="json")},
                                 job_id=new_job_id(), retry=Retry(max=PAGE_RETRIES), **ttls)
    conn.hset(keys.document(doc.id), "combine_job", json.dumps(combine.id))
    queue.enqueue_call(COMBINED_FUNC, kwargs={"payload": {"id": doc.id}}, job_id=new_job_id(),
                       depends_on=Dependency(jobs=[combine], allow_failure=True), **ttls)


def combined(payload: dict) -> Done:
    """Job function: the combine step ended; record it and end the document."""
    conn, keys, _ = job_context()
    record = load(conn, keys, payload["id"])
    if record is None or record["status"] in TERMINAL:
        return Done()
    result = read_result(conn, keys, record["combine_job"])
    set_status(conn, keys, payload["id"], DocStatus.COMPLETED, combined=result.model_dump(mode="json"))
    return Done({"combined": result.status.value})


def cancel(conn: redis.Redis, settings: Settings, doc_id: str) -> None:
    """Stop what is left: queued pages leave their queue, running ones stop within a step;
    pages already read keep their results."""
    keys = Keys(settings.key_prefix)
    record = load(conn, keys, doc_id)
    if record is None or record["status"] in TERMINAL:
        return
    pages = page_results(conn, keys, record)
    for job_id in [record.get("render_job"), record.get("aggregate_job"), record.get("combine_job")]:
        job = fetch_job(conn, job_id) if job_id else None
        if job is not None and not (job.is_finished or job.is_failed or job.is_canceled):
            try:
                job.cancel()
            except InvalidJobOperation:
                pass
    for job_id, page in zip(record.get("page_jobs", []), pages, strict=False):
        if page.status not in FINAL:
            cancel_job(conn, settings, job_id)
    final = [p if p.status in FINAL else p.model_copy(update={"status": ResultStatus.CANCELED}) for p in pages]
    set_status(conn, keys, doc_id, DocStatus.CANCELED, pages=[p.model_dump(mode="json") for p in final])

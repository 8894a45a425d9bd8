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
`aggregate` and `combined` are bookkeeping jobs (contract/done.py) that any batching worker runs.
"""

from __future__ import annotations

import json
import time
from enum import StrEnum
from typing import cast

from pydantic import BaseModel, Field

from contract.context import Context
from contract.done import Done
from contract.keys import Kind, Priority
from contract.payloads import ChatJob, ChatMessage, ImagePart, TextPart
from contract.queues import JobSpec, cancel_job, enqueue, enqueue_many
from contract.results import FINAL, JobResult, ResultStatus, read_result
from work import records

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
    grammar: str | None = None
    """What every page's answer must follow (api/structured.py made it from response_format)."""
    created_at: int = Field(default_factory=lambda: int(time.time()))


class PageResult(JobResult):
    page: int


# ---- the record -----------------------------------------------------------------------------


def create(ctx: Context, doc: DocumentJob, status: DocStatus) -> None:
    records.create(
        ctx.conn,
        ctx.keys.document(doc.id),
        status.value,
        ctx.settings.results_ttl,
        meta=doc.model_dump(mode="json"),
        pages_total=len(doc.page_numbers),
    )


def set_status(ctx: Context, doc_id: str, status: DocStatus, **fields) -> bool:
    """The one writer of a document's status (work/records.py); `fields` are written with it.
    False when the document has ended already (or expired): nothing was written."""
    return records.write_status(ctx.conn, ctx.keys.document(doc_id), status.value, TERMINAL, **fields)


def load(ctx: Context, doc_id: str) -> dict | None:
    record = records.read(ctx.conn, ctx.keys.document(doc_id))
    if record is None:
        return None
    record["status"] = DocStatus(record["status"])
    record["meta"] = DocumentJob.model_validate(record["meta"])
    return record


def status_of(ctx: Context, doc_id: str) -> DocStatus | None:
    value = cast(bytes | None, ctx.conn.hget(ctx.keys.document(doc_id), "status"))
    return DocStatus(value.decode()) if value else None


def _remember(ctx: Context, doc_id: str, field: str, job_id: str) -> None:
    ctx.conn.hset(ctx.keys.document(doc_id), field, json.dumps(job_id))


# ---- work -----------------------------------------------------------------------------------


def enqueue_render(ctx: Context, doc: DocumentJob) -> None:
    job = enqueue(ctx, JobSpec(RENDER_FUNC, doc, Kind.VISION, doc.model, Priority.BATCH))
    _remember(ctx, doc.id, "render_job", job.id)


def page_job(doc: DocumentJob, page: ImagePart) -> ChatJob:
    return ChatJob(
        model=doc.model,
        max_tokens=doc.max_tokens,
        messages=[ChatMessage(role="user", content=[page, TextPart(text=doc.prompt)])],
        grammar=doc.grammar,
    )


def fan_out(ctx: Context, doc: DocumentJob, pages: list[ImagePart]) -> list[str]:
    """One chat job per page on the model's batch queue, and the aggregating job after them."""
    specs = [JobSpec.chat(page_job(doc, p), Kind.VISION, priority=Priority.BATCH, retries=PAGE_RETRIES) for p in pages]
    page_ids = [spec.job_id for spec in specs]
    # Ids first, so a status read between the two enqueues already sees every page.
    if not set_status(ctx, doc.id, DocStatus.RUNNING, page_jobs=page_ids):
        return []  # cancelled meanwhile
    jobs = enqueue_many(ctx, specs)
    aggregate = enqueue(
        ctx, JobSpec(AGGREGATE_FUNC, {"id": doc.id}, Kind.VISION, doc.model, Priority.BATCH, after=jobs)
    )
    _remember(ctx, doc.id, "aggregate_job", aggregate.id)
    return page_ids


def page_results(ctx: Context, record: dict) -> list[PageResult]:
    """Every page's outcome: recorded ones from the record, the rest from their jobs."""
    if "pages" in record:
        return [PageResult.model_validate(p) for p in record["pages"]]
    numbers = record["meta"].page_numbers
    if "page_jobs" not in record:  # not rendered yet — or never will be: then none was read
        if record["status"] in (DocStatus.FAILED, DocStatus.CANCELED):
            failed = record["status"] == DocStatus.FAILED
            error = record.get("error") or {"code": "canceled", "message": "the document was cancelled"}
            status = ResultStatus.FAILED if failed else ResultStatus.CANCELED
            return [PageResult(page=n, status=status, error=error) for n in numbers]
        return [PageResult(page=n, status=ResultStatus.QUEUED) for n in numbers]
    return [
        _page(n, read_result(ctx.conn, ctx.keys, job_id))
        for n, job_id in zip(numbers, record["page_jobs"], strict=True)
    ]


def _page(number: int, result: JobResult) -> PageResult:
    return PageResult(page=number, **result.model_dump())


def aggregate(payload: dict) -> Done:
    """Job function: every page job has ended; copy their outcomes into the record."""
    ctx = Context.for_current_job()
    record = load(ctx, payload["id"])
    if record is None or record["status"] in TERMINAL:
        return Done()
    doc: DocumentJob = record["meta"]
    pages = page_results(ctx, record)
    done = [p for p in pages if p.status == ResultStatus.COMPLETED]
    dumped = [p.model_dump(mode="json") for p in pages]
    if not done:
        set_status(
            ctx,
            doc.id,
            DocStatus.FAILED,
            pages=dumped,
            error={"code": "all_pages_failed", "message": "no page could be read"},
        )
    elif doc.combine and doc.combine_model:
        set_status(ctx, doc.id, DocStatus.RUNNING, pages=dumped)
        _enqueue_combine(ctx, doc, done)
    else:
        set_status(ctx, doc.id, DocStatus.COMPLETED, pages=dumped)
    return Done({"pages_completed": len(done)})


def _enqueue_combine(ctx: Context, doc: DocumentJob, pages: list[PageResult]) -> None:
    assert doc.combine_model is not None
    text = "\n\n".join(f"## Page {p.page}\n\n{p.text}" for p in pages)
    job = ChatJob(
        model=doc.combine_model,
        max_tokens=doc.combine_max_tokens,
        messages=[ChatMessage(role="user", content=f"{doc.combine}\n\n{text}")],
    )
    combine = enqueue(ctx, JobSpec.chat(job, doc.combine_kind, priority=Priority.BATCH, retries=PAGE_RETRIES))
    _remember(ctx, doc.id, "combine_job", combine.id)
    enqueue(
        ctx,
        JobSpec(COMBINED_FUNC, {"id": doc.id}, doc.combine_kind, doc.combine_model, Priority.BATCH, after=[combine]),
    )


def combined(payload: dict) -> Done:
    """Job function: the combine step ended; record it and end the document."""
    ctx = Context.for_current_job()
    record = load(ctx, payload["id"])
    if record is None or record["status"] in TERMINAL:
        return Done()
    result = read_result(ctx.conn, ctx.keys, record["combine_job"])
    set_status(ctx, payload["id"], DocStatus.COMPLETED, combined=result.model_dump(mode="json"))
    return Done({"combined": result.status.value})


def cancel(ctx: Context, doc_id: str) -> None:
    """Stop what is left: queued pages leave their queue, running ones stop within a step;
    pages already read keep their results."""
    record = load(ctx, doc_id)
    if record is None or record["status"] in TERMINAL:
        return
    pages = page_results(ctx, record)
    for field in ("render_job", "aggregate_job", "combine_job"):
        if record.get(field):
            cancel_job(ctx, record[field])
    for job_id, page in zip(record.get("page_jobs", []), pages, strict=False):
        if page.status not in FINAL:
            cancel_job(ctx, job_id)
    final = [p if p.status in FINAL else p.model_copy(update={"status": ResultStatus.CANCELED}) for p in pages]
    set_status(ctx, doc_id, DocStatus.CANCELED, pages=[p.model_dump(mode="json") for p in final])

"""`/v1/documents`: read a PDF (or page images) page by page with a vision model.

    POST   /v1/documents              multipart (`file`, repeatable for images) or JSON with
                                      base64 (`document`, or `images`); → 202 with the id
    GET    /v1/documents/<id>         status, pages done/total, per-page status and errors
    GET    /v1/documents/<id>/result  per-page text and usage in page order (?format=markdown)
    DELETE /v1/documents/<id>         cancel what is left

The API only checks what it is sent: size (MAX_DOCUMENT_BYTES → 413), that a PDF opens
(corrupt or encrypted → 400) and how many pages it has (MAX_DOCUMENT_PAGES), with pypdfium2,
which opens a document without rendering it. Rendering runs in a job of the vision worker
(worker_vision/pages.py); the work itself is work/documents.py.
"""

from __future__ import annotations

import base64
import binascii
import re
import uuid

import pypdfium2 as pdfium
from flask import Blueprint, Response, current_app, jsonify, request, url_for

from contract import blobs, registry
from contract.keys import Kind
from contract.payloads import ImagePart
from contract.results import ResultStatus
from work import documents
from work.documents import DocStatus, DocumentJob

from . import images
from .bodies import json_body
from .errors import APIError
from .intake import canonical_model, route
from .schemas import DocumentRequest
from .structured import grammar_for

bp = Blueprint("documents", __name__, url_prefix="/v1")
ID_PREFIX = "doc_"


PAGE_RANGE = re.compile(r"([0-9]{1,9})(?:-([0-9]{1,9}))?")
"""One chunk of `pages`: ASCII digits, a range with both ends ("1-", "+1", "١" are not pages)."""


def parse_pages(spec: str | None, total: int, most: int) -> list[int]:
    """The pages to read, in the order given, each once; at most `most` of them. Linear in
    the spec: a range is checked against the limit before it is expanded, so no spec (the
    field is ≤ 1,000 characters) costs more than `most` steps per range."""
    if not spec:
        _check_page_count(total, most)
        return list(range(1, total + 1))
    numbers: list[int] = []
    seen: set[int] = set()
    for chunk in spec.split(","):
        match = PAGE_RANGE.fullmatch(chunk.strip())
        if match is None:
            raise _bad(f"pages: {chunk.strip()[:20]!r} is not a page or a range like 2-5", "pages")
        lo, hi = int(match.group(1)), int(match.group(2) or match.group(1))
        if not 1 <= lo <= hi <= total:
            raise _bad(f"pages: {chunk.strip()[:20]!r} is outside 1-{total}", "pages")
        _check_page_count(hi - lo + 1, most)  # before expanding it
        for n in range(lo, hi + 1):
            if n not in seen:
                seen.add(n)
                numbers.append(n)
        _check_page_count(len(numbers), most)
    return numbers


@bp.post("/documents")
def create_document():
    ext = current_app.extensions["mis"]
    settings = ext.settings
    fields, uploads = _read_request(settings.max_document_bytes)
    req = DocumentRequest.model_validate(fields, context={"settings": settings})
    grammar = grammar_for(req.response_format)
    model = canonical_model(ext, req.model)
    kind, _ = route(ext, model, want=Kind.VISION)  # an unknown model is a 404, and loads nothing
    if kind != Kind.VISION:
        raise _bad(f"model {req.model!r} is a text model; documents need a vision model", "model")
    combine_model, combine_kind = None, Kind.TEXT
    if req.combine:
        combine_model = canonical_model(ext, req.combine_model or settings.text_model)
        combine_kind = _served_kind(ext, combine_model, "combine_model")
    if not uploads:
        raise _bad("send a PDF or page images (multipart field `file`, or `document`/`images` in JSON)", "file")
    doc_id = ID_PREFIX + uuid.uuid4().hex
    ttl = settings.batch_queued_ttl + settings.job_timeout
    common = dict(
        id=doc_id,
        model=model,
        prompt=req.prompt,
        max_tokens=req.max_tokens,
        dpi=req.dpi,
        combine=req.combine,
        combine_model=combine_model,
        combine_kind=combine_kind,
        combine_max_tokens=req.combine_max_tokens,
        grammar=grammar,
    )
    if uploads[0].startswith(b"%PDF"):
        if len(uploads) > 1:
            raise _bad("send one PDF per document", "file")
        numbers = parse_pages(req.pages, _count_pdf_pages(uploads[0]), settings.max_document_pages)
        doc = DocumentJob(page_numbers=numbers, source_blob=blobs.put(ext.conn, ext.keys, uploads[0], ttl), **common)
        documents.create(ext, doc, DocStatus.QUEUED)
        documents.enqueue_render(ext, doc)
    else:
        numbers = parse_pages(req.pages, len(uploads), settings.max_document_pages)
        parts = [_store_image(uploads[n - 1], ext, ttl) for n in numbers]
        doc = DocumentJob(page_numbers=numbers, **common)
        documents.create(ext, doc, DocStatus.RUNNING)
        documents.fan_out(ext, doc, parts)
    response = jsonify(_view(doc_id))
    response.status_code = 202
    response.headers["Location"] = url_for("documents.get_document", doc_id=doc_id)
    return response


@bp.get("/documents/<doc_id>")
def get_document(doc_id: str):
    return jsonify(_view(doc_id))


@bp.get("/documents/<doc_id>/result")
def get_result(doc_id: str):
    ext = current_app.extensions["mis"]
    record = _record(doc_id)
    if record["status"] not in documents.TERMINAL:
        raise APIError(
            409,
            f"document {doc_id!r} is {record['status']}; its result is not ready",
            code="document_in_progress",
            headers={"Retry-After": "2"},
        )
    pages = documents.page_results(ext, record)
    combined = record.get("combined")
    fmt = request.args.get("format", "json")
    if fmt == "markdown":
        parts = [
            f"## Page {p.page}\n\n{p.text}"
            if p.status == ResultStatus.COMPLETED
            else f"## Page {p.page}\n\n*({p.status}: {(p.error or {}).get('message', '')})*"
            for p in pages
        ]
        if combined:
            parts.insert(0, f"## Combined\n\n{combined.get('text', '')}")
        return Response("\n\n".join(parts) + "\n", mimetype="text/markdown")
    if fmt != "json":
        raise _bad("format must be json or markdown", "format")
    usage = {
        k: sum((p.usage or {}).get(k, 0) for p in pages) for k in ("prompt_tokens", "completion_tokens", "total_tokens")
    }
    return jsonify(
        id=doc_id,
        object="document.result",
        model=record["meta"].model,
        status=record["status"],
        pages=[p.model_dump(mode="json") for p in pages],
        combined=combined,
        usage=usage,
    )


@bp.delete("/documents/<doc_id>")
def cancel_document(doc_id: str):
    ext = current_app.extensions["mis"]
    _record(doc_id)
    documents.cancel(ext, doc_id)
    return jsonify(_view(doc_id))


# ---- helpers ---------------------------------------------------------------------------------


def _record(doc_id: str) -> dict:
    ext = current_app.extensions["mis"]
    record = documents.load(ext, doc_id) if doc_id.startswith(ID_PREFIX) else None
    if record is None:
        raise APIError(
            404,
            f"no document {doc_id!r} is kept here (unknown, or expired)",
            param="document_id",
            code="document_not_found",
        )
    return record


def _view(doc_id: str) -> dict:
    ext = current_app.extensions["mis"]
    record = _record(doc_id)
    pages = documents.page_results(ext, record)
    done = sum(p.status in (ResultStatus.COMPLETED, ResultStatus.FAILED) for p in pages)
    doc: DocumentJob = record["meta"]
    return {
        "id": doc_id,
        "object": "document",
        "model": doc.model,
        "status": record["status"].value,
        "created_at": doc.created_at,
        "completed_at": record.get(f"{record['status'].value}_at") if record["status"] in documents.TERMINAL else None,
        "pages_done": done,
        "pages_total": record["pages_total"],
        "pages": [{"page": p.page, "status": p.status.value, "error": p.error} for p in pages],
        "error": record.get("error"),
        "links": {
            "self": url_for("documents.get_document", doc_id=doc_id),
            "result": url_for("documents.get_result", doc_id=doc_id),
        },
    }


def _read_request(max_bytes: int) -> tuple[dict, list[bytes]]:
    """The request's fields and its uploaded files' bytes (in order)."""
    if request.mimetype == "multipart/form-data":
        files = request.files.getlist("file")
        uploads = [f.read(max_bytes + 1) for f in files]
        fields: dict = request.form.to_dict()
    elif request.is_json:
        fields = json_body()
        if fields.get("document") is not None and fields.get("images") is not None:
            raise _bad("send either `document` (a PDF) or `images` (page images), not both", "images")
        encoded = [fields["document"]] if isinstance(fields.get("document"), str) else fields.get("images") or []
        if not isinstance(encoded, list) or not all(isinstance(e, str) for e in encoded):
            raise _bad("images must be a list of base64 strings or data URIs", "images")
        what = "the document" if "document" in fields and encoded == [fields["document"]] else "an image"
        uploads = [_b64(e, max_bytes, what) for e in encoded]
    else:
        raise APIError(415, "send multipart/form-data or application/json", code="unsupported_media_type")
    for data in uploads:
        if len(data) > max_bytes:
            raise APIError(
                413,
                f"a document may be at most {max_bytes // 1_000_000} MB (MAX_DOCUMENT_BYTES)",
                param="file",
                code="document_too_large",
            )
    return fields, uploads


def _b64(value: str, max_bytes: int, what: str = "the document") -> bytes:
    body = value.partition(",")[2] if value.startswith("data:") else value
    if len(body) > (max_bytes * 4) // 3 + 4:
        return b"x" * (max_bytes + 1)  # too large: reported as such without decoding it
    try:
        return base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError):
        param = "document" if what == "the document" else "images"
        raise _bad(f"{what} is not valid base64 (nor a base64 data URI)", param) from None


def _count_pdf_pages(data: bytes) -> int:
    try:
        pdf = pdfium.PdfDocument(data)
    except pdfium.PdfiumError as exc:
        if "password" in str(exc).lower():
            raise _bad("the PDF is encrypted; send it without a password", "file", "encrypted_pdf") from None
        raise _bad("the PDF could not be opened (corrupt or truncated)", "file", "invalid_pdf") from None
    try:
        return len(pdf)
    finally:
        pdf.close()


def _check_page_count(count: int, most: int) -> None:
    if count > most:
        raise _bad(
            f"the document has more than {most} pages to read (MAX_DOCUMENT_PAGES)",
            "pages",
            "too_many_pages",
        )


def _store_image(data: bytes, ext, ttl: int) -> ImagePart:
    most = ext.settings.max_image_bytes  # a page image is an image: chat's limit
    if len(data) > most:
        raise APIError(413, f"a page image may be at most {most // 1_000_000} MB (MAX_IMAGE_BYTES)",
                       param="file", code="image_too_large")  # fmt: skip
    media_type, width, height = images.inspect(data, ext.settings.max_image_pixels)
    return ImagePart(blob=blobs.put(ext.conn, ext.keys, data, ttl), media_type=media_type, width=width, height=height)


def _served_kind(ext, model: str, param: str) -> Kind:
    """The kind of a model live workers serve (or are loading) now. The combine step runs
    only after every page, so a model loaded on demand for it could fail to load before its
    job is even queued, and the document would wait for it forever: it must be there."""
    workers = [w for w in registry.live_workers(ext.conn, ext.keys) if w.model == model]
    if not workers or all(w.state == registry.WorkerState.ERROR for w in workers):
        raise APIError(
            404, f"{param} {model!r} is not served here; load it first (POST /admin/load)",
            param=param, code="model_not_found",
        )  # fmt: skip
    return workers[0].kind


def _bad(message: str, param: str, code: str = "invalid_value") -> APIError:
    return APIError(400, message, param=param, code=code)

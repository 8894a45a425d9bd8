"""The OpenAPI description of the long-running work: documents (api/documents.py) and the
Batch API (api/files.py, api/batches.py). `api.openapi.build` merges these paths and
schemas into the one document."""

from __future__ import annotations

from contract.results import ResultStatus
from contract.settings import Settings
from work.batches import BatchStatus
from work.documents import DocStatus

from .openapi_builders import (
    BOOL,
    INT,
    STR,
    OperationScope,
    array,
    errors,
    json_response,
    nullable,
    obj,
    operation,
    param,
    ref,
)
from .schemas import DocumentRequest

TIMES = ("in_progress", "finalizing", "completed", "failed", "expired", "cancelling", "cancelled")


def schemas(settings: Settings) -> dict:
    request = DocumentRequest.model_json_schema(ref_template="#/components/schemas/{model}")
    request["properties"]["dpi"]["maximum"] = settings.max_dpi
    multipart = {
        **request,
        "properties": {k: v for k, v in request["properties"].items() if k not in ("document", "images")},
    }
    multipart["properties"]["file"] = {
        "anyOf": [{"type": "string", "format": "binary"}, array({"type": "string", "format": "binary"})],
        "description": "a PDF, or page images (PNG, JPEG, WebP) in order",
    }
    for name in ("dpi", "max_tokens", "combine_max_tokens"):  # form fields are text
        multipart["properties"][name] = {"type": "string", "pattern": "^[0-9]{1,6}$"}
    error = nullable(obj(["code", "message"], code=STR, message=STR))
    page_status = {"enum": [s.value for s in ResultStatus]}
    result = obj(
        ["status"],
        status=page_status,
        text=STR,
        finish_reason=nullable(STR),
        usage=nullable({"type": "object"}),
        error=error,
    )
    return {
        "DocumentRequest": request,
        "DocumentUpload": multipart,
        "Document": obj(
            ["id", "object", "model", "status", "created_at", "pages_done", "pages_total", "pages", "links"],
            id=STR,
            object={"const": "document"},
            model=STR,
            status={"enum": [s.value for s in DocStatus]},
            created_at=INT,
            completed_at=nullable(INT),
            pages_done=INT,
            pages_total=INT,
            error=error,
            pages=array(obj(["page", "status"], page=INT, status=page_status, error=error)),
            links=obj(["self", "result"], self=STR, result=STR),
        ),
        "DocumentResult": obj(
            ["id", "object", "model", "status", "pages", "usage"],
            id=STR,
            object={"const": "document.result"},
            model=STR,
            status={"enum": [s.value for s in DocStatus]},
            combined=nullable(result),
            pages=array({**result, "properties": {**result["properties"], "page": INT}}),
            usage=obj(prompt_tokens=INT, completion_tokens=INT, total_tokens=INT),
        ),
        "File": obj(
            ["id", "object", "bytes", "created_at", "filename", "purpose"],
            id=STR,
            object={"const": "file"},
            bytes=INT,
            created_at=INT,
            expires_at=nullable(INT),
            filename=STR,
            purpose={"enum": ["batch", "batch_output"]},
            status=STR,
            status_details=nullable(STR),
        ),
        "FileUpload": obj(["file", "purpose"], file={"type": "string", "format": "binary"}, purpose={"const": "batch"}),
        "BatchRequest": obj(
            ["input_file_id", "endpoint", "completion_window"],
            input_file_id={"type": "string", "minLength": 1, "maxLength": 100},
            endpoint={"const": "/v1/chat/completions"},
            completion_window={"const": "24h"},
            metadata=nullable({"type": "object", "additionalProperties": STR}),
        ),
        "Batch": obj(
            [
                "id",
                "object",
                "endpoint",
                "input_file_id",
                "completion_window",
                "status",
                "created_at",
                "request_counts",
            ],
            id=STR,
            object={"const": "batch"},
            endpoint=STR,
            input_file_id=STR,
            completion_window=STR,
            status={"enum": [s.value for s in BatchStatus]},
            output_file_id=nullable(STR),
            error_file_id=nullable(STR),
            created_at=INT,
            expires_at=nullable(INT),
            errors=nullable(
                obj(
                    ["data"],
                    object={"const": "list"},
                    data=array(
                        obj(
                            ["code", "message"],
                            code=nullable(STR),
                            message=STR,
                            param=nullable(STR),
                            line=nullable(INT),
                        )
                    ),
                )
            ),
            request_counts=obj(["total", "completed", "failed"], total=INT, completed=INT, failed=INT),
            metadata=nullable({"type": "object"}),
            **{f"{t}_at": nullable(INT) for t in TIMES},
        ),
        "BatchList": obj(
            ["object", "data", "has_more"],
            object={"const": "list"},
            data=array(ref("Batch")),
            first_id=nullable(STR),
            last_id=nullable(STR),
            has_more=BOOL,
        ),
    }


def paths(v1: OperationScope) -> dict:
    doc_id = param("doc_id", "path", STR, "`doc_<id>` from POST /v1/documents")
    batch_id = param("batch_id", "path", STR, "`batch_<id>` from POST /v1/batches")
    file_id = param("file_id", "path", STR, "`file-<id>` from POST /v1/files")
    document = json_response("The document's status", ref("Document"))
    upload = {
        "required": True,
        "content": {
            "multipart/form-data": {"schema": ref("DocumentUpload")},
            "application/json": {"schema": ref("DocumentRequest")},
        },
    }
    create = operation(
        "Read a document page by page with a vision model",
        {"202": document, **errors(400, 401, 403, 404, 413, 415, 500, 503)},
        description=(
            "A PDF (rendered in a worker) or page images; one job per page on the vision model's "
            "batch queue, then an optional `combine` step on a text model. See docs/DOCUMENTS.md."
        ),
        **v1,
    )
    create["requestBody"] = upload
    file_create = operation(
        "Upload a Batch API input file (JSONL)",
        {"200": json_response("The file", ref("File")), **errors(400, 401, 403, 413, 415, 500, 503)},
        **v1,
    )
    file_create["requestBody"] = {"required": True, "content": {"multipart/form-data": {"schema": ref("FileUpload")}}}
    return {
        "/v1/documents": {"post": create},
        "/v1/documents/{doc_id}": {
            "get": operation(
                "A document's status, pages done and per-page status",
                {"200": document, **errors(401, 403, 404, 500, 503)},
                parameters=[doc_id],
                **v1,
            ),
            "delete": operation(
                "Cancel what is left of a document",
                {"200": document, **errors(401, 403, 404, 500, 503)},
                parameters=[doc_id],
                **v1,
            ),
        },
        "/v1/documents/{doc_id}/result": {
            "get": operation(
                "A finished document's per-page results",
                {
                    "200": {
                        "description": "Per-page text and usage in page order (JSON), or Markdown",
                        "headers": json_response("", {})["headers"],
                        "content": {
                            "application/json": {"schema": ref("DocumentResult")},
                            "text/markdown": {"schema": STR},
                        },
                    },
                    **errors(400, 401, 403, 404, 409, 500, 503),
                },
                parameters=[doc_id, param("format", "query", {"enum": ["json", "markdown"]}, "default json")],
                **v1,
            )
        },
        "/v1/files": {"post": file_create},
        "/v1/files/{file_id}": {
            "get": operation(
                "A file's metadata",
                {"200": json_response("The file", ref("File")), **errors(401, 403, 404, 500, 503)},
                parameters=[file_id],
                **v1,
            )
        },
        "/v1/files/{file_id}/content": {
            "get": operation(
                "A file's bytes (JSONL)",
                {
                    "200": {
                        "description": "The file",
                        "headers": json_response("", {})["headers"],
                        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
                    },
                    **errors(401, 403, 404, 500, 503),
                },
                parameters=[file_id],
                **v1,
            )
        },
        "/v1/batches": {
            "get": operation(
                "List the kept batches, newest first",
                {
                    "200": json_response("A page of batches", ref("BatchList")),
                    **errors(400, 401, 403, 500, 503),
                },
                parameters=[
                    param(
                        "limit", "query", {"type": "integer", "minimum": 1, "maximum": 100}, "at most this many (20)"
                    ),
                    param("after", "query", STR, "a batch id: the page starts after it"),
                ],
                **v1,
            ),
            "post": operation(
                "Create a batch of chat completions from an input file",
                {"200": json_response("The batch", ref("Batch")), **errors(400, 401, 403, 404, 500, 503)},
                body=ref("BatchRequest"),
                **v1,
            ),
        },
        "/v1/batches/{batch_id}": {
            "get": operation(
                "A batch's status and counts",
                {"200": json_response("The batch", ref("Batch")), **errors(401, 403, 404, 500, 503)},
                parameters=[batch_id],
                **v1,
            )
        },
        "/v1/batches/{batch_id}/cancel": {
            "post": operation(
                "Cancel a batch",
                {"200": json_response("The batch", ref("Batch")), **errors(401, 403, 404, 500, 503)},
                parameters=[batch_id],
                **v1,
            )
        },
    }

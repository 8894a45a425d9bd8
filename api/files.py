"""`/v1/files` of the Batch API: `POST` (multipart `file` + `purpose=batch`), `GET /<id>`,
`GET /<id>/content`. Files live in Redis (work/files.py) for RESULTS_TTL; an upload may be
at most MAX_FILE_BYTES."""

from __future__ import annotations

from flask import Blueprint, Response, current_app, jsonify, request

from work import files

from .errors import APIError, file_not_found

bp = Blueprint("files", __name__, url_prefix="/v1")
PURPOSES = ("batch",)


@bp.post("/files")
def create_file():
    ext = current_app.extensions["mis"]
    if request.mimetype != "multipart/form-data":
        raise APIError(415, "upload files as multipart/form-data", code="unsupported_media_type")
    purpose = request.form.get("purpose")
    if purpose not in PURPOSES:
        raise APIError(
            400, 'purpose must be "batch" (the only purpose this server takes)', param="purpose", code="invalid_value"
        )
    upload = request.files.get("file")
    if upload is None:
        raise APIError(400, "the multipart field `file` is missing", param="file", code="missing_required_parameter")
    data = upload.read(ext.settings.max_file_bytes + 1)
    if len(data) > ext.settings.max_file_bytes:
        raise APIError(
            413,
            f"a file may be at most {ext.settings.max_file_bytes // 1_000_000} MB (MAX_FILE_BYTES)",
            param="file",
            code="file_too_large",
        )
    info = files.put(
        ext.conn,
        ext.keys,
        data,
        filename=(upload.filename or "upload.jsonl")[:255],
        purpose=purpose,
        ttl=ext.settings.results_ttl,
    )
    return jsonify(info)


@bp.get("/files/<file_id>")
def get_file(file_id: str):
    ext = current_app.extensions["mis"]
    info = files.info(ext.conn, ext.keys, file_id)
    if info is None:
        raise file_not_found(file_id)
    return jsonify(info)


@bp.get("/files/<file_id>/content")
def get_file_content(file_id: str):
    ext = current_app.extensions["mis"]
    data = files.content(ext.conn, ext.keys, file_id)
    if data is None:
        raise file_not_found(file_id)
    return Response(data, mimetype="application/octet-stream")

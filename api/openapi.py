"""`GET /openapi.json`: an OpenAPI 3.1 description of every public endpoint.

Request bodies come from the pydantic models that validate them (api/schemas.py), with the
limits this server applies (its Settings) written in, so the document cannot drift from the
validation. Paths, responses and the shapes of answers are written here by hand, next to
each other, because the views build their answers as plain dicts. Security follows the
configuration: `/v1/*` declares the bearer API key when API_KEYS / API_KEYS_FILE are set, the
admin endpoints the admin token when ADMIN_TOKEN is set. tests/test_openapi.py runs
schemathesis against a live server to hold every answer to this document.
"""

from __future__ import annotations

from flask import Blueprint, current_app, jsonify
from pydantic.json_schema import JsonSchemaMode

from contract.commands import CommandStatus
from contract.payloads import TokenLogprob, Usage
from contract.registry import ManagerInfo, WorkerState
from contract.settings import Settings

from . import openapi_jobs
from .openapi_builders import (
    BOOL,
    ERROR_TEXT,
    INT,
    NUM,
    REF,
    REQUEST_ID,
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
from .schemas import MAX_TOP_LOGPROBS, TOKEN_ID, ChatCompletionRequest

bp = Blueprint("openapi", __name__)


@bp.get("/openapi.json")
def openapi_json():
    ext = current_app.extensions
    if "mis_openapi" not in ext:  # built once per app: settings do not change while it runs
        ext["mis_openapi"] = build(ext["mis"].settings)
    return jsonify(ext["mis_openapi"])


# ---- schemas of answers ---------------------------------------------------------------------


def _answer_schemas() -> dict:
    logprobs = nullable(obj(["content"], content=nullable(array(ref("TokenLogprob"))), refusal={"type": "null"}))
    worker_fields = dict(
        name=STR,
        model=STR,
        kind=ref("Kind"),
        state=ref("WorkerState"),
        error=nullable(STR),
        host=STR,
        pid=INT,
        last_heartbeat_s=NUM,
    )
    return {
        "Error": obj(
            ["error"],
            error=obj(
                ["message", "type", "param", "code"], message=STR, type=STR, param=nullable(STR), code=nullable(STR)
            ),
        ),
        "WorkerState": {"type": "string", "enum": [s.value for s in WorkerState]},
        "ChatCompletion": obj(
            ["id", "object", "created", "model", "choices", "usage"],
            id=STR,
            object={"const": "chat.completion"},
            created=INT,
            model=STR,
            system_fingerprint={"type": "null"},
            usage=ref("Usage"),
            choices=array(
                obj(
                    ["index", "message", "finish_reason"],
                    index=INT,
                    logprobs=logprobs,
                    finish_reason={"enum": ["stop", "length"]},
                    message=obj(
                        ["role", "content"], role={"const": "assistant"}, content=STR, refusal={"type": "null"}
                    ),
                )
            ),
        ),
        "ChatCompletionChunk": obj(
            ["id", "object", "created", "model", "choices"],
            id=STR,
            object={"const": "chat.completion.chunk"},
            created=INT,
            model=STR,
            system_fingerprint={"type": "null"},
            usage=nullable(ref("Usage")),
            choices=array(
                obj(
                    ["index", "delta", "finish_reason"],
                    index=INT,
                    logprobs=logprobs,
                    finish_reason=nullable({"enum": ["stop", "length"]}),
                    delta=obj(role={"const": "assistant"}, content=STR),
                )
            ),
        ),
        "ChatCompletionEvent": {
            "description": "One Server-Sent Event: a chunk, an error that ended the stream, or "
            "`[DONE]`. Comment lines (`: keepalive`) come while the job waits.",
            "type": "object",
            "required": ["data"],
            "properties": {
                "id": STR,
                "event": {"const": "message"},
                "data": {
                    "type": "string",
                    "if": {"const": "[DONE]"},
                    "else": {
                        "contentMediaType": "application/json",
                        "contentSchema": {"anyOf": [ref("ChatCompletionChunk"), ref("Error")]},
                    },
                },
            },
        },
        "Model": obj(
            ["id", "object", "created", "owned_by", "kind", "workers"],
            id=STR,
            object={"const": "model"},
            created=INT,
            owned_by=STR,
            kind=ref("Kind"),
            workers=INT,
            context_length=nullable(INT),
        ),
        "ModelList": obj(["object", "data"], object={"const": "list"}, data=array(ref("Model"))),
        "Health": obj(
            ["status", "redis", "workers"],
            status={"enum": ["ok", "degraded", "unavailable"]},
            redis=BOOL,
            workers=array(obj(list(worker_fields), **worker_fields, jobs_done=INT, tokens_generated=INT)),
        ),
        "AdminHealth": obj(
            ["status", "redis", "workers", "managers"],
            status={"enum": ["ok", "degraded"]},
            redis=BOOL,
            managers=array(ref("ManagerInfo")),
            workers=array(obj(list(worker_fields), **worker_fields, rss_bytes=INT)),
        ),
        "AdminStatus": obj(
            ["workers", "queues", "totals", "recent_errors"],
            workers=array(
                obj(
                    ["name", "model", "kind", "state", "capacity", "active_jobs"],
                    name=STR,
                    model=STR,
                    kind=ref("Kind"),
                    state=ref("WorkerState"),
                    host=STR,
                    pid=INT,
                    manager=nullable(STR),
                    capacity=INT,
                    active_jobs=INT,
                    jobs_done=INT,
                    tokens_generated=INT,
                    tokens_per_s=NUM,
                    jobs_per_min=NUM,
                    error=nullable(STR),
                )
            ),
            queues=array(
                obj(
                    ["name", "model", "kind", "priority", "queued", "running"],
                    name=STR,
                    model=STR,
                    kind=ref("Kind"),
                    priority={"enum": ["interactive", "batch"]},
                    queued=INT,
                    running=INT,
                )
            ),
            totals=obj(
                ["tokens_per_s", "jobs_per_min", "queued", "running"],
                tokens_per_s=NUM,
                jobs_per_min=NUM,
                queued=INT,
                running=INT,
            ),
            recent_errors=array(
                obj(["job_id", "queue", "error"], job_id=STR, queue=STR, ended_at=nullable(STR), error=STR)
            ),
        ),
        "LoadResult": obj(
            ["model", "kind", "status"],
            model=STR,
            kind=ref("Kind"),
            status={"enum": ["loaded", "loading"]},
            workers=array(obj(["name", "host", "pid"], name=STR, host=STR, pid=INT)),
            commands=array(obj(["id", "url"], id=STR, url=STR)),
        ),
        "UnloadResult": obj(
            ["model", "status", "cancelled_running_jobs"],
            model=STR,
            status={"enum": ["unloaded", "unloading"]},
            workers_left=INT,
            cancelled_running_jobs=BOOL,
        ),
    }


def _model_schemas(settings: Settings) -> dict:
    """Components from pydantic models: the chat request (with this server's limits), and
    the payload and registry models that answers embed."""
    components: dict = {}
    mode: JsonSchemaMode
    for model, mode in (
        (ChatCompletionRequest, "validation"),
        (Usage, "serialization"),
        (TokenLogprob, "serialization"),
        (CommandStatus, "serialization"),
        (ManagerInfo, "serialization"),
    ):
        schema = model.model_json_schema(mode=mode, ref_template=REF)
        for name, sub in schema.pop("$defs", {}).items():
            if components.setdefault(name, sub) != sub:
                raise RuntimeError(f"two different schemas named {name}")
        components[model.__name__] = schema
    _write_limits(components["ChatCompletionRequest"], settings)
    return components


def _branch(prop: dict, json_type: str) -> dict:
    return next(b for b in prop.get("anyOf", [prop]) if b.get("type") == json_type)


def _write_limits(request: dict, settings: Settings) -> None:
    """The limits the validators apply from settings (api/schemas.py), as JSON Schema."""
    props = request["properties"]
    props["messages"]["maxItems"] = settings.max_messages
    stop_text = {"minLength": 1, "maxLength": settings.max_stop_length}
    _branch(props["stop"], "string").update(stop_text)
    stops = _branch(props["stop"], "array")
    stops.update(maxItems=settings.max_stop_sequences)
    stops["items"].update(stop_text)
    bias = _branch(props["logit_bias"], "object")
    bias.update(
        maxProperties=settings.max_logit_bias,
        propertyNames={"pattern": f"^{TOKEN_ID.pattern}$"},
        additionalProperties={"type": "number", "minimum": -100, "maximum": 100},
    )
    props["top_logprobs"]["description"] = f"0 to {MAX_TOP_LOGPROBS}; needs `logprobs: true`"
    for name in ("max_tokens", "max_completion_tokens"):
        props[name]["description"] = "capped by the model's context (`context_length` in /v1/models)"


# ---- the document ---------------------------------------------------------------------------


def build(settings: Settings) -> dict:
    api_security: list[dict[str, list[str]]] = [{"apiKey": []}] if settings.api_keys_configured else [{}]
    admin_security: list[dict[str, list[str]]] = (
        [{"adminToken": []}, {"adminBasic": []}] if settings.admin_token else [{}]
    )
    v1: OperationScope = dict(tag="OpenAI-compatible", security=api_security)
    adm: OperationScope = dict(tag="Admin", security=admin_security)
    model_path = param(
        "model_path",
        "query",
        {"type": "string", "minLength": 1, "maxLength": 256},
        "a directory name under MODELS_DIR or a Hugging Face repo id (org/name)",
        required=True,
    )
    wait = param(
        "wait",
        "query",
        {"type": "number", "minimum": 0, "maximum": 300},
        "seconds to wait for the outcome before answering 202 (default 60)",
    )
    completion = {
        "description": "The completion, or its stream of chunks when `stream` is true",
        "headers": REQUEST_ID,
        "content": {
            "application/json": {"schema": ref("ChatCompletion")},
            "text/event-stream": {"schema": ref("ChatCompletionEvent")},
        },
    }
    paths = {
        "/v1/chat/completions": {
            "post": operation(
                "Create a chat completion",
                {"200": completion, **errors(400, 401, 403, 404, 413, 429, 500, 503, 504)},
                body=ref("ChatCompletionRequest"),
                description=(
                    "OpenAI's chat completions. With `stream: true` the answer is Server-Sent Events; a "
                    "request the model refuses (prompt longer than its context) is a 400 before the "
                    'stream starts, a failure mid-stream is a last `data: {"error": ...}` event.'
                ),
                **v1,
            )
        },
        "/v1/chat/completions/{completion_id}": {
            "get": operation(
                "Read a finished chat completion back",
                {
                    "200": json_response("The completion", ref("ChatCompletion")),
                    **errors(400, 401, 403, 404, 409, 500, 503, 504),
                },
                parameters=[param("completion_id", "path", STR, "`chatcmpl-<id>` from a completion")],
                **v1,
            )
        },
        "/v1/models": {
            "get": operation(
                "List the models live workers serve",
                {"200": json_response("Models", ref("ModelList")), **errors(401, 403, 500, 503)},
                **v1,
            )
        },
        "/v1/models/{model_id}": {
            "get": operation(
                "Describe one served model",
                {"200": json_response("The model", ref("Model")), **errors(401, 403, 404, 500, 503)},
                parameters=[param("model_id", "path", STR, "a model id from /v1/models")],
                **v1,
            )
        },
        "/health": {
            "get": operation(
                "Liveness: Redis and the workers",
                {
                    "200": json_response("Redis answers (`degraded`: no worker serves)", ref("Health")),
                    "503": json_response("Redis is unreachable", ref("Health")),
                },
                tag="Service",
                security=[{}],
            )
        },
        "/openapi.json": {
            "get": operation(
                "This document", {"200": json_response("OpenAPI 3.1", {"type": "object"})}, tag="Service", security=[{}]
            )
        },
        "/admin/health": {
            "get": operation(
                "Workers with their memory, managers with theirs",
                {"200": json_response("Health", ref("AdminHealth")), **errors(401, 403, 500, 503)},
                **adm,
            )
        },
        "/admin/status": {
            "get": operation(
                "Workers, queues, rates and recent errors",
                {"200": json_response("Status", ref("AdminStatus")), **errors(401, 403, 500, 503)},
                **adm,
            )
        },
        "/admin/load": {
            "post": operation(
                "Load a model through a manager",
                {
                    "200": json_response("Loaded and serving", ref("LoadResult")),
                    "202": json_response("Still loading after `wait`; follow the command links", ref("LoadResult")),
                    **errors(400, 401, 403, 500, 503),
                },
                parameters=[
                    model_path,
                    param("kind", "query", {"enum": ["text", "vision"]}, "guessed from the model if absent"),
                    param("replicas", "query", {"type": "integer", "minimum": 1, "maximum": 16}, "default 1"),
                    param(
                        "keep_alive",
                        "query",
                        {"type": "integer", "minimum": -1, "maximum": 604800},
                        "idle seconds before the workers stop (-1: never)",
                    ),
                    wait,
                ],
                **adm,
            )
        },
        "/admin/unload": {
            "post": operation(
                "Unload a model: its workers finish (or cancel) and exit",
                {
                    "200": json_response("Gone", ref("UnloadResult")),
                    "202": json_response("Still unloading after `wait`", ref("UnloadResult")),
                    **errors(400, 401, 403, 404, 500, 503),
                },
                parameters=[model_path, param("cancel", "query", {"type": "boolean"}, "cancel running jobs"), wait],
                **adm,
            )
        },
        "/admin/commands/{command_id}": {
            "get": operation(
                "A load command's state",
                {"200": json_response("The command", ref("CommandStatus")), **errors(401, 403, 404, 500, 503)},
                parameters=[param("command_id", "path", STR, "from /admin/load's 202")],
                **adm,
            )
        },
        "/metrics": {
            "get": operation(
                "Prometheus metrics",
                {
                    "200": {
                        "description": "Text exposition format 0.0.4",
                        "headers": REQUEST_ID,
                        "content": {"text/plain": {"schema": STR}},
                    },
                    **errors(401, 403, 500),
                },
                **adm,
            )
        },
    }
    paths.update(openapi_jobs.paths(v1))
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "MLX Inference Server",
            "version": "0.1.0",
            "description": (
                "OpenAI-compatible chat completions in front of MLX models. Errors are always "
                '`{"error": {message, type, param, code}}`; every response carries X-Request-Id. '
                "The rq dashboard at /rq (admin) is a browser UI and not described here. "
                "See docs/API.md and docs/SECURITY.md."
            ),
        },
        "paths": paths,
        "components": {
            "schemas": {**_model_schemas(settings), **_answer_schemas(), **openapi_jobs.schemas(settings)},
            "responses": {f"Error{s}": json_response(text, ref("Error")) for s, text in ERROR_TEXT.items()},
            "headers": {
                "RequestId": {
                    "description": "The request's id, also in the server's log lines "
                    "(a chat completion's id for chat requests)",
                    "required": True,
                    "schema": STR,
                }
            },
            "securitySchemes": {
                "apiKey": {"type": "http", "scheme": "bearer", "description": "A key from API_KEYS / API_KEYS_FILE"},
                "adminToken": {"type": "http", "scheme": "bearer", "description": "ADMIN_TOKEN"},
                "adminBasic": {
                    "type": "http",
                    "scheme": "basic",
                    "description": "ADMIN_TOKEN as the password, any user name (browsers)",
                },
            },
        },
    }

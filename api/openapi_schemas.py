"""The component schemas of the OpenAPI document (api/openapi.py): the shapes of answers,
written by hand next to each other because the views build their answers as plain dicts, and
the request models' schemas from pydantic with this server's limits written in."""

from __future__ import annotations

from pydantic.json_schema import JsonSchemaMode

from contract.commands import CommandStatus
from contract.payloads import TokenLogprob, Usage
from contract.registry import ManagerInfo, WorkerState
from contract.settings import Settings

from .openapi_builders import BOOL, INT, NUM, REF, STR, array, nullable, obj, ref
from .schemas import MAX_TOP_LOGPROBS, TOKEN_ID, ChatCompletionRequest


def answer_schemas() -> dict:
    logprobs = nullable(obj(["content"], content=nullable(array(ref("TokenLogprob"))), refusal={"type": "null"}))
    finish = {"enum": ["stop", "length", "tool_calls"]}
    head = dict(id=STR, created=INT, model=STR, system_fingerprint={"type": "null"})
    """What a completion and its chunks share."""
    function = {"const": "function"}
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
            **head,
            object={"const": "chat.completion"},
            usage=ref("Usage"),
            choices=array(
                obj(
                    ["index", "message", "finish_reason"],
                    index=INT,
                    logprobs=logprobs,
                    finish_reason=finish,
                    message=obj(
                        ["role", "content"],
                        role={"const": "assistant"},
                        content=nullable(STR),
                        refusal={"type": "null"},
                        tool_calls=array(ref("ToolCall")),
                        reasoning_content=STR,
                    ),
                )
            ),
        ),
        "ChatCompletionChunk": obj(
            ["id", "object", "created", "model", "choices"],
            **head,
            object={"const": "chat.completion.chunk"},
            usage=nullable(ref("Usage")),
            choices=array(
                obj(
                    ["index", "delta", "finish_reason"],
                    index=INT,
                    logprobs=logprobs,
                    finish_reason=nullable(finish),
                    delta=obj(
                        role={"const": "assistant"},
                        content=STR,
                        reasoning_content=STR,
                        tool_calls=array(
                            obj(["index"], index=INT, id=STR, type=function, function=obj(name=STR, arguments=STR))
                        ),
                    ),
                )
            ),
        ),
        "ToolCall": obj(
            ["id", "type", "function"],
            id=STR,
            type=function,
            function=obj(["name", "arguments"], name=STR, arguments=STR),
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
                    step_s=NUM,
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


def model_schemas(settings: Settings) -> dict:
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

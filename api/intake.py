"""Chat intake, shared by every view that runs chat jobs (chat completions, batches,
documents): routing a model to the kind of its live workers, and turning a
validated request into a job payload (images checked and stored, max_tokens capped).

Views import this module, never each other.
"""

from __future__ import annotations

from flask import g

from contract import registry
from contract.context import Context
from contract.keys import Kind
from contract.modelref import InvalidModelRef, check_length, parse_model_ref
from contract.payloads import ChatJob, ImagePart

from . import autoload, images
from .errors import APIError
from .legacy_request import CompletionRequest
from .schemas import ChatCompletionRequest
from .structured import grammar_for
from .tools import job_tools, refuse_legacy


def chat_payload(ctx: Context, req: ChatCompletionRequest, image_ttl: int | None = None) -> tuple[Kind, ChatJob]:
    """The job for a validated request (routed, images checked and stored), and its queue's kind."""
    refuse_legacy({name for name in ("functions", "function_call") if getattr(req, name) is not None})
    grammar = grammar_for(req.response_format)  # a format we cannot enforce is a 400 first
    tools = job_tools(req.tools, req.tool_choice, req.parallel_tool_calls)
    model = canonical_model(ctx, req.model)
    kind, context_length = route(ctx, model, want=CHAT_KINDS)
    if kind == Kind.EMBEDDING:
        raise APIError(
            400,
            f"model {model!r} is an embedding model; send its inputs to /v1/embeddings, and chat to a "
            "text or vision model (see /v1/models)",
            param="model",
            code="wrong_model_kind",
        )
    if req.image_count:
        _check_images_allowed(req, kind, ctx.settings.max_images)
    urls = [url for m in req.messages for url in m.image_urls]
    stored = iter(images.intake_all(urls, ctx.settings, ctx.conn, ctx.keys, ttl=image_ttl))

    def store_image(url: str) -> ImagePart:  # checked and stored already; asked in the same order
        return next(stored)

    return kind, ChatJob(
        model=model,
        messages=[m.to_payload(store_image) for m in req.messages],
        max_tokens=_max_tokens(req.requested_max_tokens() or ctx.settings.default_max_tokens, context_length),
        sampling=req.sampling(),
        stop=req.stop or [],
        logprobs=bool(req.logprobs),
        top_logprobs=req.top_logprobs or 0,
        grammar=grammar,
        **tools,
        enable_thinking=False
        if req.enable_thinking is None and req.reasoning_effort == "none"
        else req.enable_thinking,
        reasoning_effort=req.reasoning_effort,
        max_reasoning_tokens=req.max_reasoning_tokens,
    )


def completion_payloads(ctx: Context, req: CompletionRequest) -> tuple[Kind, list[ChatJob]]:
    """Legacy completions: a job per prompt and choice (choice j of prompt i at i * n + j),
    each a raw prompt for a text model's worker."""
    model = canonical_model(ctx, req.model)
    kind, context_length = route(ctx, model, want=Kind.TEXT)
    if kind != Kind.TEXT:
        raise APIError(
            400,
            f"model {req.model!r} is a {kind} model; legacy completions (a raw prompt) need a text model",
            param="model",
            code="invalid_value",
        )
    jobs = [
        ChatJob(
            model=model,
            messages=[],
            prompt=prompt,
            max_tokens=_max_tokens(req.max_tokens, context_length),
            sampling=req.sampling(choice),
            stop=req.stops(),
            logprobs=req.logprobs is not None,
            top_logprobs=req.logprobs or 0,
        )
        for prompt in req.prompts()
        for choice in range(req.n)
    ]
    return kind, jobs


def canonical_model(ctx: Context, model: str) -> str:
    """The one name of the model a request names (`./X`, `X/` and a path inside the model
    root are all `X`, contract/modelref.py), so no spelling starts a second worker; a name
    that is no valid reference stays as given (and is not found); one over the length limit
    is a 400, as everywhere."""
    try:
        check_length(model)
    except InvalidModelRef as exc:
        raise APIError(400, str(exc), param="model", code="invalid_model") from None
    try:
        return parse_model_ref(model, ctx.settings.model_roots).name
    except InvalidModelRef:
        return model


CHAT_KINDS = frozenset({Kind.TEXT, Kind.VISION})
"""The kinds that chat: a chat request loads no embedding model on demand."""


def route(ctx: Context, model: str, want: Kind | frozenset[Kind] | None = None) -> tuple[Kind, int]:
    """The kind of queue a request for `model` goes to (that of its live workers, never its
    name) and the model's context length (0 while not known); raises when nobody serves it
    and it cannot be loaded on demand — with `want`, nor loaded as that kind (a request that
    needs a vision model starts no load of a text one)."""
    workers = registry.live_workers(ctx.conn, ctx.keys)
    g.live_workers = workers  # read once per request: prefix routing uses them too (api/delivery.py)
    serving = registry.serving_models(workers)
    if model in serving:
        return serving[model][0].kind, context_length(serving[model])
    others = [w for w in workers if w.model == model]
    if any(w.state == registry.WorkerState.ERROR for w in others):
        reason = next((w.error for w in others if w.error), "no reason given")
        raise APIError(
            503, f"model {model!r} failed to load: {reason}", code="model_unavailable", headers={"Retry-After": "30"}
        )
    if others:
        if ctx.settings.autoload_policy != "off":
            return others[0].kind, 0  # loading: the request waits in the queue
        raise APIError(
            503, f"model {model!r} is loading; retry shortly", code="model_loading", headers={"Retry-After": "5"}
        )
    kind = autoload.start(ctx, model, want)
    if kind is None:
        raise model_not_found(model, serving)
    return kind, 0


def context_length(workers: list[registry.WorkerInfo]) -> int:
    """The smallest context its workers report (replicas agree unless loaded differently)."""
    known = [w.context_length for w in workers if w.context_length > 0]
    return min(known) if known else 0


def model_not_found(model: str, serving: dict) -> APIError:
    live = ", ".join(sorted(serving)) or "none"
    return APIError(
        404, f"model {model!r} is not served here; live models: {live}", param="model", code="model_not_found"
    )


def _max_tokens(requested: int, context_length: int) -> int:
    """Capped by the model's context (0: not known yet); the worker caps it again by what
    the prompt leaves. A cap rather than OpenAI's 400: clients send one max_tokens to many
    models and cannot count our prompt tokens, and `finish_reason: length` says it was hit."""
    return min(requested, context_length) if context_length > 0 else requested


def _check_images_allowed(req: ChatCompletionRequest, kind: Kind, max_images: int) -> None:
    if kind != Kind.VISION:
        raise APIError(
            400,
            f"model {req.model!r} is a text-only model and does not accept images; "
            'use a vision model (kind "vision" in /v1/models)',
            param="messages",
            code="images_not_supported",
        )
    if req.image_count > max_images:
        raise APIError(
            400,
            f"a request may hold at most {max_images} images; this one has {req.image_count}",
            param="messages",
            code="too_many_images",
        )

"""The body of `POST /v1/embeddings`, checked (OpenAI's fields, each refused with its name when
wrong, never ignored), and the job it becomes: for the view (api/embeddings.py) and for batch
files' lines (api/batches.py)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from contract.context import Context
from contract.keys import Kind, Priority
from contract.payloads import EmbedJob
from contract.queues import EMBED_FUNC, JobSpec

from .errors import APIError
from .intake import canonical_model, route


class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1)
    input: Any
    """A string, a list of strings, a list of token ids, or a list of token-id lists."""
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1, le=65536)
    user: str | None = Field(None, max_length=256)
    """Accepted, as OpenAI does; it changes nothing here."""

    @field_validator("input")
    @classmethod
    def _input(cls, value: Any, info: ValidationInfo) -> Any:
        limit = info.context["settings"].max_embed_inputs if info.context else 2048
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not value:
            raise ValueError("input must be a non-empty string, list of strings, or list of token ids")
        if all(_is_id(v) for v in value):
            value = [value]  # one input given as token ids
        if len(value) > limit:
            raise ValueError(f"at most {limit} inputs per request (MAX_EMBED_INPUTS); this one has {len(value)}")
        if all(isinstance(v, str) for v in value):
            empty = next((i for i, v in enumerate(value) if not v), None)
            if empty is not None:
                raise ValueError(f"input {empty} is an empty string")
            return value
        if all(isinstance(v, list) and all(_is_id(t) for t in v) for v in value):
            empty = next((i for i, v in enumerate(value) if not v), None)
            if empty is not None:
                raise ValueError(f"input {empty} is an empty list of token ids")
            return value
        raise ValueError("input must be a string, a list of strings, a list of token ids or a list of such lists")

    @property
    def texts(self) -> list[str] | None:
        return self.input if isinstance(self.input[0], str) else None

    @property
    def tokens(self) -> list[list[int]] | None:
        return None if isinstance(self.input[0], str) else self.input


def _is_id(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def embed_payload(ctx: Context, req: EmbeddingRequest, *, batch: bool = False) -> EmbedJob:
    """The job for a checked request, routed to an embedding model (else a 400 naming the fix)."""
    model = canonical_model(ctx, req.model)
    kind, _ = route(ctx, model, want=Kind.EMBEDDING)
    if kind != Kind.EMBEDDING:
        raise APIError(
            400,
            f"model {model!r} is a {kind} model; embeddings come from an embedding model "
            "(see /v1/models for kind `embedding`), and chat from /v1/chat/completions",
            param="model",
            code="wrong_model_kind",
        )
    return EmbedJob(model=model, texts=req.texts, tokens=req.tokens, dimensions=req.dimensions, batch=batch)


def embed_spec(ctx: Context, payload: EmbedJob, **options) -> JobSpec:
    priority = Priority.BATCH if payload.batch else Priority.INTERACTIVE
    if not payload.batch:  # read once, by this request: nothing to keep
        options.setdefault("keep", ctx.settings.unstored_ttl)
        options.setdefault("record_success", False)
    return JobSpec(EMBED_FUNC, payload, Kind.EMBEDDING, payload.model, priority=priority, **options)

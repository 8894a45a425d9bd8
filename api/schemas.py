"""HTTP request bodies as pydantic models, validated at the boundary.

Unknown fields are ignored (OpenAI clients send `user`, `store`, `metadata`, ...); known
fields are checked for type and range, and each violation becomes a 400 naming the field.
Limits an operator may change (message count, stop sequences, logit_bias entries) come from
the settings passed as validation context (`model_validate(body, context={"settings": s})`);
without one, the settings' defaults apply. The OpenAPI document (api/openapi.py) states the
same limits.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from contract import payloads
from contract.payloads import ChatMessage, SamplingParams
from contract.settings import Settings

from .structured import ResponseFormat
from .tools import RequestToolCall, ToolChoice, ToolDef

MAX_TOP_LOGPROBS = 20
"""OpenAI's limit; each costs a decode of one token per generated token."""
TOKEN_ID = re.compile(r"[0-9]{1,10}")
"""A logit_bias key: ASCII digits only (`str.isdigit` takes "²", which int() refuses)."""
SEED_RANGE = (-(2**63), 2**64 - 1)
"""Signed or unsigned 64-bit; workers take the seed modulo 2**64."""


def limit(info: ValidationInfo, name: str) -> int:
    """A request limit from the settings in the validation context, else its default."""
    settings = (info.context or {}).get("settings")
    return getattr(settings, name) if settings is not None else Settings.model_fields[name].default


STRICT = ConfigDict(extra="ignore", strict=True)
"""JSON types as sent: `"max_tokens": true` is no 1 and `"stream": "true"` no true (pydantic's
lax mode would take both)."""


class TextContent(BaseModel):
    """A text part of a request message (OpenAI's `{"type": "text", "text": ...}`)."""

    model_config = STRICT

    type: Literal["text"]
    text: str


class ImageURL(BaseModel):
    model_config = STRICT
    url: str = Field(min_length=1)
    detail: Literal["auto", "low", "high"] | None = None


class ImageURLContent(BaseModel):
    """An image part of a request message (OpenAI's `{"type": "image_url", "image_url": {...}}`);
    api/images.py turns it into the payload's `ImagePart` (a stored blob)."""

    model_config = STRICT

    type: Literal["image_url"]
    image_url: ImageURL


RequestContent = Annotated[TextContent | ImageURLContent, Field(discriminator="type")]


class RequestMessage(BaseModel):
    model_config = STRICT

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[RequestContent] | None = None
    tool_calls: list[RequestToolCall] | None = Field(None, max_length=128)
    """An assistant turn's calls (the history an agent sends back)."""
    tool_call_id: str | None = Field(None, min_length=1, max_length=256)
    """A `tool` turn: the id of the call it answers."""

    @field_validator("content", mode="before")
    @classmethod
    def _known_parts(cls, value):
        # Said plainly, rather than pydantic's "Input should be a valid string" for the union.
        if isinstance(value, list):
            for i, part in enumerate(value):
                kind = part.get("type") if isinstance(part, dict) else None
                if kind not in ("text", "image_url"):
                    raise ValueError(f"content part {i} has type {kind!r}; parts are text or image_url")
        return value

    @model_validator(mode="after")
    def _tool_fields(self):
        if self.role == "tool" and (self.tool_call_id is None or self.content is None):
            raise ValueError("a tool message needs tool_call_id and content (the call's result)")
        if self.tool_calls and self.role != "assistant":
            raise ValueError("only assistant messages carry tool_calls")
        if self.tool_call_id is not None and self.role != "tool":
            raise ValueError("only tool messages carry tool_call_id")
        return self

    @property
    def image_urls(self) -> list[str]:
        if not isinstance(self.content, list):
            return []
        return [p.image_url.url for p in self.content if isinstance(p, ImageURLContent)]

    def to_payload(self, store_image: Callable[[str], payloads.ImagePart]) -> ChatMessage:
        """The message as a job payload; images go through `store_image` (validated, stored)
        and the message keeps its parts in order. Text-only messages become one string."""
        # "developer" is OpenAI's newer name for the system role.
        role = "system" if self.role == "developer" else self.role
        calls = {
            "tool_calls": [c.model_dump() for c in self.tool_calls] if self.tool_calls else None,
            "tool_call_id": self.tool_call_id,
        }
        if not isinstance(self.content, list):
            return ChatMessage(role=role, content=self.content or "", **calls)
        if not self.image_urls:
            text = "".join(p.text for p in self.content if isinstance(p, TextContent))
            return ChatMessage(role=role, content=text, **calls)
        parts = [
            payloads.TextPart(text=p.text) if isinstance(p, TextContent) else store_image(p.image_url.url)
            for p in self.content
        ]
        return ChatMessage(role=role, content=parts, **calls)


class StreamOptions(BaseModel):
    model_config = STRICT
    include_usage: bool = False


class SamplingRequest(BaseModel):
    """The sampling fields chat and legacy completions share, checked the same way."""

    model_config = STRICT

    model: str = Field(min_length=1, max_length=256)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=0)
    min_p: float | None = Field(None, ge=0, le=1)
    # Below 0.01, dividing logits by the penalty overflows float32 and sampling reads NaN.
    repetition_penalty: float | None = Field(None, ge=0.01, le=10)
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    logit_bias: dict[str, float] | None = None
    seed: int | None = Field(None, ge=SEED_RANGE[0], le=SEED_RANGE[1])
    stop: str | list[str] | None = None
    n: int = Field(1, ge=1, description="choices, each its own sequence in the batch (at most MAX_N)")
    stream: bool = False
    stream_options: StreamOptions | None = None

    @field_validator("n")
    @classmethod
    def _n(cls, value: int, info: ValidationInfo) -> int:
        most = limit(info, "max_n")
        if value > most:
            raise ValueError(f"at most {most} choices (MAX_N)")
        return value

    @field_validator("stop")
    @classmethod
    def _stops(cls, value, info: ValidationInfo):
        stops = [value] if isinstance(value, str) else (value or [])
        most, longest = limit(info, "max_stop_sequences"), limit(info, "max_stop_length")
        if len(stops) > most:
            raise ValueError(f"at most {most} stop sequences (MAX_STOP_SEQUENCES)")
        if any(not s for s in stops):
            raise ValueError("stop sequences must not be empty")
        if any(len(s) > longest for s in stops):
            raise ValueError(f"a stop sequence may have at most {longest} characters (MAX_STOP_LENGTH)")
        return stops

    @field_validator("logit_bias")
    @classmethod
    def _bias(cls, value, info: ValidationInfo):
        if value is None:
            return value
        most = limit(info, "max_logit_bias")
        if len(value) > most:
            raise ValueError(f"at most {most} entries (MAX_LOGIT_BIAS)")
        for token, bias in value.items():
            if not TOKEN_ID.fullmatch(token):
                raise ValueError(f"keys must be token ids, got {token[:20]!r}")
            if not -100 <= bias <= 100:
                raise ValueError("biases must be between -100 and 100")
        return value

    def sampling(self, choice: int = 0) -> SamplingParams:
        """Choice `choice`'s sampling: a given seed is the first choice's, the others count up
        from it, so n seeded choices are reproducible and not all the same."""
        given = {
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": self.top_k,
            "min_p": self.min_p,
            "repetition_penalty": self.repetition_penalty,
            "presence_penalty": self.presence_penalty,
            "frequency_penalty": self.frequency_penalty,
            "seed": None if self.seed is None else (self.seed + choice) % 2**64,
            "logit_bias": {int(k): v for k, v in (self.logit_bias or {}).items()} or None,
        }
        return SamplingParams(**{k: v for k, v in given.items() if v is not None})


class ChatCompletionRequest(SamplingRequest):
    messages: list[RequestMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    store: bool | None = None
    """Keep the completion RESULT_TTL for GET /v1/chat/completions/<id> (else UNSTORED_TTL)."""
    response_format: ResponseFormat | None = None
    """Enforced by constrained decoding (api/structured.py, docs/STRUCTURED.md)."""
    tools: list[ToolDef] | None = None
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    reasoning_effort: Literal["none", "minimal", "low", "medium", "high"] | None = None
    """Reaches templates that take it; `none` also turns thinking off."""
    enable_thinking: bool | None = None
    """Extension: the thinking switch of templates that have one (Qwen3's)."""
    max_reasoning_tokens: int | None = Field(None, ge=1)
    """Extension: end a thinking model's thinking after this many tokens."""
    functions: Any = Field(None, json_schema_extra={"deprecated": True})
    """OpenAI's deprecated form of `tools`: refused with a 400 (api/tools.py)."""
    function_call: Any = Field(None, json_schema_extra={"deprecated": True})
    """OpenAI's deprecated form of `tool_choice`: refused with a 400 (api/tools.py)."""

    @field_validator("messages")
    @classmethod
    def _message_count(cls, value, info: ValidationInfo):
        most = limit(info, "max_messages")
        if len(value) > most:
            raise ValueError(f"at most {most} messages (MAX_MESSAGES); this request has {len(value)}")
        return value

    @field_validator("top_logprobs")
    @classmethod
    def _logprobs(cls, value: int | None, info: ValidationInfo) -> int | None:
        # A field validator (logprobs is declared, so validated, first): the error names
        # `top_logprobs` as its param, where a model validator's would name none.
        if value and not info.data.get("logprobs"):
            raise ValueError("top_logprobs requires logprobs: true")
        return value

    @property
    def image_count(self) -> int:
        return sum(len(m.image_urls) for m in self.messages)

    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


DEFAULT_DOCUMENT_PROMPT = "Transcribe the text of this page as Markdown."


class DocumentRequest(BaseModel):
    """The fields of a document request (multipart form fields, or the JSON body)."""

    model_config = ConfigDict(extra="ignore")

    model: str = Field(min_length=1, max_length=256)
    prompt: str = Field(DEFAULT_DOCUMENT_PROMPT, min_length=1, max_length=20_000)
    pages: str | None = Field(None, max_length=1000, description='pages to read, e.g. "1-3,7" (default: all)')
    dpi: int = Field(150, ge=36)
    max_tokens: int = Field(512, ge=1, le=32768)
    combine: str | None = Field(None, min_length=1, max_length=20_000)
    combine_model: str | None = Field(None, min_length=1, max_length=256)
    combine_max_tokens: int = Field(512, ge=1, le=32768)
    document: str | None = Field(None, description="JSON only: the PDF, base64")
    images: list[str] | None = Field(None, description="JSON only: page images, base64 or data URIs")
    response_format: ResponseFormat | None = None
    """Every page's answer follows it (a schema: "extract these fields from each page"); in a
    multipart form, the JSON text of the object."""

    @field_validator("response_format", mode="before")
    @classmethod
    def _form_json(cls, value):
        if isinstance(value, str):  # a multipart form field
            try:
                return json.loads(value)
            except ValueError:
                raise ValueError("must be a JSON object (response_format as JSON text in a form)") from None
        return value

    @field_validator("dpi")
    @classmethod
    def _dpi(cls, value, info: ValidationInfo):
        most = limit(info, "max_dpi")
        if value > most:
            raise ValueError(f"at most {most} (MAX_DPI)")
        return value

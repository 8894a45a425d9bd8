"""Anthropic's Messages API requests (`POST /v1/messages`, `POST /v1/messages/count_tokens`)
as pydantic models; api/anthropic_chat.py translates them into chat completion requests.

Strict on purpose: a field this server does not know, or knows but cannot honour, is a 400
naming it, never ignored. Accepted without effect, because they change nothing here:
`cache_control` (the prompt cache reuses every known prefix on its own), `metadata`,
`service_tier`, `speed`, `inference_geo`, `user_profile_id`, `workspace_id`, and the
`citations` of earlier answers' text.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, field_validator, model_validator

FORBID = ConfigDict(extra="forbid", strict=True)
"""Unknown fields are refused (Anthropic's own API refuses them too); JSON types as sent."""

UNSUPPORTED_BLOCKS = {
    "document": "documents (PDF, plain text) are not supported here; send their text, or page images",
    "search_result": "search_result blocks are not supported here; send their text",
    "container_upload": "containers (code execution) are not available here",
}
"""Content blocks of Anthropic's API that this server refuses, with what to do instead.
The results of server tools (web search, code execution, ...) are refused like the tools."""


def _tagged(*kinds: str) -> Discriminator:
    # Tags that are not identifiers stay out of error paths (api/errors.py keeps only
    # identifiers): an error reads `messages.0.content.1.source`, not `...1.image.source`.
    def tag(value: Any) -> str | None:
        kind = _type(value) if isinstance(value, dict) else getattr(value, "type", None)
        return f"type={kind}" if kind in kinds else None

    return Discriminator(
        tag, custom_error_type="invalid_value", custom_error_message=f"type must be one of {', '.join(kinds)}"
    )


def _type(value: Any) -> str | None:
    """The `type` of a block as sent (anything but a string is no type)."""
    kind = value.get("type") if isinstance(value, dict) else None
    return kind if isinstance(kind, str) else None


def as_blocks(value: Any) -> Any:
    """Content given as a string is one text block: then one type holds both forms, and an
    error inside a block is told as that (not as "Input should be a valid string")."""
    return [{"type": "text", "text": value}] if isinstance(value, str) else value


class CacheControl(BaseModel):
    model_config = FORBID
    type: Literal["ephemeral"]
    ttl: Literal["5m", "1h"] | None = None


class TextBlock(BaseModel):
    model_config = FORBID
    type: Literal["text"]
    text: str
    cache_control: CacheControl | None = None
    citations: list[dict[str, Any]] | None = None
    """An earlier answer's citations: about the text, not part of the prompt."""


class Base64Source(BaseModel):
    model_config = FORBID
    type: Literal["base64"]
    media_type: Literal["image/jpeg", "image/png", "image/gif", "image/webp"]
    data: str = Field(min_length=1)


class URLSource(BaseModel):
    model_config = FORBID
    type: Literal["url"]
    url: str = Field(min_length=1)


class ImageBlock(BaseModel):
    """An image: base64 data, or a URL the chat path fetches only when ALLOW_REMOTE_IMAGES
    allows it (api/images.py), exactly as for an `image_url` part."""

    model_config = FORBID
    type: Literal["image"]
    source: Annotated[
        Annotated[Base64Source, Tag("type=base64")] | Annotated[URLSource, Tag("type=url")], _tagged("base64", "url")
    ]
    cache_control: CacheControl | None = None

    @field_validator("source", mode="before")
    @classmethod
    def _no_files(cls, value):
        if isinstance(value, dict) and value.get("type") == "file":
            raise ValueError("file sources (Anthropic's Files API) are not supported here; send the image as base64")
        return value

    @property
    def url(self) -> str:
        """The chat path's `image_url`: a data URL, or the remote URL as given."""
        if isinstance(self.source, URLSource):
            return self.source.url
        return f"data:{self.source.media_type};base64,{self.source.data}"


class ToolUseBlock(BaseModel):
    """A call an earlier assistant turn made."""

    model_config = FORBID
    type: Literal["tool_use"]
    id: str = Field(min_length=1, max_length=256)
    name: str = Field(min_length=1, max_length=64)
    input: dict[str, Any]
    cache_control: CacheControl | None = None


class ToolResultBlock(BaseModel):
    model_config = FORBID
    type: Literal["tool_result"]
    tool_use_id: str = Field(min_length=1, max_length=256)
    content: list[TextBlock] = []
    is_error: bool = False
    cache_control: CacheControl | None = None

    @field_validator("content", mode="before", json_schema_input_type=str | list[TextBlock])
    @classmethod
    def _text_only(cls, value):
        for i, block in enumerate(value if isinstance(value, list) else []):
            kind = _type(block)
            if kind != "text":
                raise ValueError(f"block {i} has type {kind!r}; tool results may hold text only here")
        return as_blocks(value)

    @property
    def text(self) -> str:
        text = "\n".join(b.text for b in self.content)
        return f"Error: {text}" if self.is_error else text


class ThinkingBlock(BaseModel):
    """An earlier answer's thinking: accepted, and dropped from the prompt."""

    model_config = FORBID
    type: Literal["thinking"]
    thinking: str
    signature: str


class RedactedThinkingBlock(BaseModel):
    model_config = FORBID
    type: Literal["redacted_thinking"]
    data: str


BLOCKS = {"text", "image", "tool_use", "tool_result", "thinking", "redacted_thinking"}
ContentBlock = Annotated[
    Annotated[TextBlock, Tag("type=text")]
    | Annotated[ImageBlock, Tag("type=image")]
    | Annotated[ToolUseBlock, Tag("type=tool_use")]
    | Annotated[ToolResultBlock, Tag("type=tool_result")]
    | Annotated[ThinkingBlock, Tag("type=thinking")]
    | Annotated[RedactedThinkingBlock, Tag("type=redacted_thinking")],
    _tagged(*sorted(BLOCKS)),
]
ALLOWED = {"user": {"text", "image", "tool_result"}, "assistant": {"text", "tool_use", "thinking", "redacted_thinking"},
           "system": {"text"}}  # fmt: skip


class InputMessage(BaseModel):
    model_config = FORBID
    role: Literal["user", "assistant", "system"]
    content: list[ContentBlock]

    @field_validator("content", mode="before", json_schema_input_type=str | list[ContentBlock])
    @classmethod
    def _known_blocks(cls, value):
        # Said plainly, rather than pydantic's "Input tag ... does not match" for the union.
        for i, block in enumerate(value if isinstance(value, list) else []):
            kind = _type(block)
            if kind in UNSUPPORTED_BLOCKS:
                raise ValueError(f"block {i}: {UNSUPPORTED_BLOCKS[kind]}")
            if kind not in BLOCKS:
                raise ValueError(
                    f"block {i} has type {kind!r}; blocks are {', '.join(sorted(BLOCKS))} "
                    "(server tools and their results are not available here)"
                )
        return as_blocks(value)

    @model_validator(mode="after")
    def _placement(self):
        if all(isinstance(b, TextBlock) and not b.text for b in self.content):
            raise ValueError(f"{self.role} messages must have non-empty content")
        for i, block in enumerate(self.content):
            if block.type not in ALLOWED[self.role]:
                raise ValueError(f"block {i}: {block.type} blocks do not belong in {self.role} messages")
        return self


class ToolDefinition(BaseModel):
    """A custom tool (a function with a JSON schema). Its calls are generated under that
    schema (docs/STRUCTURED.md), so `strict` holds whatever it says."""

    model_config = FORBID
    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    description: str | None = Field(None, max_length=10_000)
    input_schema: dict[str, Any]
    type: Literal["custom"] | None = None
    cache_control: CacheControl | None = None
    strict: bool | None = None
    eager_input_streaming: bool | None = None
    """Inputs always stream as they are generated."""
    defer_loading: bool | None = None
    allowed_callers: list[Literal["direct"]] | None = None

    @field_validator("defer_loading")
    @classmethod
    def _loaded(cls, value: bool | None) -> bool | None:
        if value:
            raise ValueError("deferred tools need Anthropic's tool search, which is not available here")
        return value


class ToolChoiceAuto(BaseModel):
    model_config = FORBID
    type: Literal["auto"]
    disable_parallel_tool_use: bool | None = None


class ToolChoiceAny(BaseModel):
    model_config = FORBID
    type: Literal["any"]
    disable_parallel_tool_use: bool | None = None


class ToolChoiceTool(BaseModel):
    model_config = FORBID
    type: Literal["tool"]
    name: str = Field(min_length=1, max_length=64)
    disable_parallel_tool_use: bool | None = None


class ToolChoiceNone(BaseModel):
    model_config = FORBID
    type: Literal["none"]


ToolChoice = Annotated[
    Annotated[ToolChoiceAuto, Tag("type=auto")]
    | Annotated[ToolChoiceAny, Tag("type=any")]
    | Annotated[ToolChoiceTool, Tag("type=tool")]
    | Annotated[ToolChoiceNone, Tag("type=none")],
    _tagged("auto", "any", "tool", "none"),
]


class ThinkingEnabled(BaseModel):
    model_config = FORBID
    type: Literal["enabled"]
    budget_tokens: int = Field(ge=1)
    """After this many thinking tokens the model's end-of-thinking marker is forced. Any
    budget below max_tokens: Anthropic's minimum (1,024) is for its own models."""
    display: Literal["summarized", "omitted"] | None = None
    """`omitted`: thinking blocks come back empty (signature only)."""


class ThinkingDisabled(BaseModel):
    model_config = FORBID
    type: Literal["disabled"]


class ThinkingAdaptive(BaseModel):
    """The model decides whether to think: the chat template's default."""

    model_config = FORBID
    type: Literal["adaptive"]
    display: Literal["summarized", "omitted"] | None = None


Thinking = Annotated[
    Annotated[ThinkingEnabled, Tag("type=enabled")]
    | Annotated[ThinkingDisabled, Tag("type=disabled")]
    | Annotated[ThinkingAdaptive, Tag("type=adaptive")],
    _tagged("enabled", "disabled", "adaptive"),
]


class JSONOutputFormat(BaseModel):
    model_config = FORBID
    type: Literal["json_schema"]
    schema_: dict[str, Any] = Field(alias="schema")


class OutputConfig(BaseModel):
    model_config = FORBID
    effort: Literal["low", "medium", "high", "xhigh", "max"] | None = None
    """Passed to templates that take a reasoning effort; `xhigh` and `max` are their `high`."""
    format: JSONOutputFormat | None = None
    """Enforced by constrained decoding, as a chat request's `response_format`."""


class Metadata(BaseModel):
    model_config = FORBID
    user_id: str | None = Field(None, max_length=512)


class MessagesInput(BaseModel):
    """What `count_tokens` takes: everything that makes the prompt."""

    model_config = FORBID

    model: str = Field(min_length=1, max_length=256)
    messages: list[InputMessage] = Field(min_length=1)
    system: list[TextBlock] | None = None
    tools: list[ToolDefinition] | None = None
    tool_choice: ToolChoice | None = None
    thinking: Thinking | None = None
    output_config: OutputConfig | None = None
    cache_control: CacheControl | None = None
    speed: Literal["standard", "fast"] | None = None
    user_profile_id: str | None = None
    workspace_id: str | None = None

    @field_validator("system", mode="before", json_schema_input_type=str | list[TextBlock] | None)
    @classmethod
    def _system_blocks(cls, value):
        return as_blocks(value)

    @field_validator("tools", mode="before")
    @classmethod
    def _custom_tools(cls, value):
        for i, tool in enumerate(value if isinstance(value, list) else []):
            kind = _type(tool)
            if kind not in (None, "custom"):
                raise ValueError(
                    f"tool {i} has type {kind!r}: Anthropic's server tools and built-in tools are not available "
                    "here; define a custom tool (name, description, input_schema)"
                )
        return value

    @field_validator("messages")
    @classmethod
    def _no_prefill(cls, value: list[InputMessage]) -> list[InputMessage]:
        if value[-1].role == "assistant":
            raise ValueError(
                "the last message is the assistant's: continuing an answer (prefill) is not supported here"
            )
        return value


class MessagesRequest(MessagesInput):
    """`POST /v1/messages`."""

    max_tokens: int = Field(ge=1)
    """Capped by what the prompt leaves of the model's context: `model_context_window_exceeded`
    when that cap ended the answer. 0 (warming Anthropic's cache) is refused."""
    stream: bool = False
    stop_sequences: list[str] | None = None
    temperature: float | None = Field(None, ge=0, le=1)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=0)
    metadata: Metadata | None = None
    service_tier: Literal["auto", "standard_only"] | None = None
    inference_geo: str | None = None

    @model_validator(mode="after")
    def _budget(self):
        if isinstance(self.thinking, ThinkingEnabled) and self.thinking.budget_tokens >= self.max_tokens:
            raise ValueError("thinking.budget_tokens must be less than max_tokens")
        return self

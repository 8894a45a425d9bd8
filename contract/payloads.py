"""Job payloads: what the API hands a worker, as small JSON-clean pydantic models.

rq stores them as the job's single keyword argument (`payload=<dict>`), so rq-dashboard can
show them and the worker re-validates them on its side of the boundary.
"""

from __future__ import annotations

import math
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

GREEDY_BELOW = 1e-5
"""Temperatures below this sample greedily: the result is the same to float32 precision, and
1/temperature would overflow float32 (mlx-lm's sampler then returns garbage or fails the
whole batch's step)."""
LOGPROB_FLOOR = -9999.0
"""What a log-probability of -inf (or NaN) is reported as: JSON has no infinity, and OpenAI
reports tokens that cannot be drawn the same way."""


class TextPart(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["text"] = "text"
    text: str


class ImagePart(BaseModel):
    """An image the API validated and stored in the blob store (contract/blobs.py)."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["image"] = "image"
    blob: str = Field(pattern=r"^[0-9a-f]{64}$")
    """sha256 hex digest: the blob store key."""
    media_type: Literal["image/png", "image/jpeg", "image/webp"]
    width: int
    height: int


ContentPart = Annotated[TextPart | ImagePart, Field(discriminator="type")]


class FunctionCall(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    arguments: str
    """JSON text, as OpenAI sends it."""


class ToolCall(BaseModel):
    """A call an earlier assistant turn made (in the history a client sends back)."""

    model_config = ConfigDict(extra="forbid")

    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "user", "assistant", "tool"]
    content: str | list[ContentPart]
    """A string, or (when the message holds images) its parts in order."""
    tool_calls: list[ToolCall] | None = None
    """An assistant turn's calls."""
    tool_call_id: str | None = None
    """A `tool` turn: the call it answers."""

    @property
    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content if isinstance(p, TextPart))

    @property
    def images(self) -> list[ImagePart]:
        return [] if isinstance(self.content, str) else [p for p in self.content if isinstance(p, ImagePart)]


class Function(BaseModel):
    """A function a request offers the model (OpenAI's `tools[i].function`)."""

    model_config = ConfigDict(extra="forbid")

    name: str
    description: str | None = None
    parameters: dict = Field(default_factory=lambda: {"type": "object", "properties": {}})
    """A JSON schema the API has checked can be enforced."""


class SamplingParams(BaseModel):
    """Sampling as OpenAI defines it, plus the extras mlx-lm offers (top_k, min_p,
    repetition_penalty). Defaults follow OpenAI (temperature 1)."""

    model_config = ConfigDict(extra="forbid")

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    repetition_penalty: float | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[int, float] = Field(default_factory=dict)
    seed: int | None = None

    def normalized(self, vocab_size: int) -> SamplingParams:
        """The same sampling in the form MLX's samplers accept for a model with `vocab_size`
        output rows, so no valid request can fail an engine step (which would end every job
        in the batch): near-zero temperatures are greedy, a top_k that keeps the whole
        vocabulary is off, and seeds are taken modulo 2**64 (MLX's key is unsigned)."""
        changes = {}
        if 0 < self.temperature < GREEDY_BELOW:
            changes["temperature"] = 0.0
        if self.top_k >= vocab_size:
            changes["top_k"] = 0
        if self.seed is not None and not 0 <= self.seed < 2**64:
            changes["seed"] = self.seed % 2**64
        return self.model_copy(update=changes) if changes else self


class ChatJob(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str
    messages: list[ChatMessage]
    max_tokens: int
    sampling: SamplingParams = Field(default_factory=SamplingParams)
    stop: list[str] = Field(default_factory=list)
    logprobs: bool = False
    top_logprobs: int = 0
    grammar: str | None = None
    """An llguidance grammar (its JSON text, made and checked by api/structured.py from
    `response_format`) that every generated token must follow; None: unconstrained."""
    tools: list[Function] = Field(default_factory=list)
    """Functions the model may call (rendered by its chat template, mlx_common/tools.py)."""
    tool_choice: str = "auto"
    """`none`, `auto`, `required`, or the name of the one function it must call."""
    parallel_tool_calls: bool = True
    enable_thinking: bool | None = None
    """Whether a model that thinks should (its template's switch); None: the template's default."""
    reasoning_effort: str | None = None
    """Passed to templates that take it."""
    max_reasoning_tokens: int | None = None
    """Extension: end the thinking block after this many tokens."""
    prompt: str | list[int] | None = None
    """A raw prompt (legacy completions) instead of `messages`: no chat template; text is
    encoded with the tokenizer's special tokens (a BOS), token ids are taken as they are."""
    count_only: bool = False
    """Only count the prompt's tokens (Anthropic's count_tokens; the API never tokenizes):
    the engine renders and encodes it, generates nothing, and the job ends at once with a
    `done` whose usage has the prompt's tokens (runtime/engine_loop.py)."""


class PromptTokensDetails(BaseModel):
    cached_tokens: int = 0
    """Prompt tokens whose KV cache was reused from an earlier request (not prefilled)."""


class CompletionTokensDetails(BaseModel):
    reasoning_tokens: int = 0
    """Tokens of the thinking block (sent as `reasoning_content`)."""


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails = Field(default_factory=PromptTokensDetails)
    completion_tokens_details: CompletionTokensDetails | None = None
    """Only for models that think."""


class TokenLogprob(BaseModel):
    """One generated token's log-probability, shaped like OpenAI's `logprobs.content[i]`."""

    token: str
    logprob: float
    bytes: list[int]
    top_logprobs: list[dict] = Field(default_factory=list)

    @field_validator("logprob")
    @classmethod
    def _finite(cls, value: float) -> float:
        return value if math.isfinite(value) else LOGPROB_FLOOR

    @field_validator("top_logprobs")
    @classmethod
    def _finite_top(cls, value: list[dict]) -> list[dict]:
        for entry in value:
            if not math.isfinite(entry.get("logprob", 0.0)):
                entry["logprob"] = LOGPROB_FLOOR
        return value


class EmbedJob(BaseModel):
    """An embeddings request as its worker runs it (api/embeddings.py makes it)."""

    model: str
    texts: list[str] | None = None
    """The inputs as text (the worker tokenizes them), or:"""
    tokens: list[list[int]] | None = None
    """the inputs as token ids, used as they are."""
    dimensions: int | None = None
    """Leading dimensions to keep (re-normalized), for models trained for it."""
    batch: bool = False
    """Batch work (a batch file's line): embedded after the interactive requests waiting."""

    @property
    def count(self) -> int:
        return len(self.texts if self.texts is not None else self.tokens or [])

"""The legacy completions request (`POST /v1/completions`): a raw prompt, no chat template.

`prompt` is a string, a list of strings, a list of token ids, or a list of token-id lists;
each prompt is one job per choice (`n`). The sampling fields are the chat request's, checked
the same way (api/schemas.py `SamplingRequest`)."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, field_validator, model_validator

from .schemas import SamplingRequest

TokenIds = list[Annotated[int, Field(ge=0, lt=2**31)]]
MAX_PROMPTS = 64
"""Prompts in one request (each is a job per choice)."""
MAX_LOGPROBS = 5
"""OpenAI's limit for the legacy `logprobs`."""


class CompletionRequest(SamplingRequest):
    prompt: str | list[str] | TokenIds | list[TokenIds]
    max_tokens: int = Field(16, ge=1)
    logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    echo: bool = False
    user: str | None = None
    suffix: None = Field(None, description="not supported: no model here fills in the middle")
    best_of: int | None = Field(None, ge=1, description="only 1 or n: every choice generated is returned")

    @field_validator("prompt")
    @classmethod
    def _prompts(cls, value: Any) -> Any:
        if value in ("", []) or (isinstance(value, list) and any(p in ("", []) for p in value)):
            raise ValueError("prompts must not be empty")
        if isinstance(value, list) and isinstance(value[0], (str, list)) and len(value) > MAX_PROMPTS:
            raise ValueError(f"at most {MAX_PROMPTS} prompts")
        return value

    @model_validator(mode="after")
    def _combinations(self) -> CompletionRequest:
        if self.best_of not in (None, 1, self.n):
            raise ValueError("best_of other than n is not supported: every choice generated is returned")
        if self.echo and self.logprobs is not None:
            raise ValueError("echo with logprobs is not supported: the prompt's tokens get no logprobs here")
        return self

    def prompts(self) -> list[str | list[int]]:
        """Each prompt: a string, or token ids."""
        p = self.prompt
        if isinstance(p, str):
            return [p]
        if isinstance(p[0], int):
            return [list(p)]  # one list of token ids
        return list(p)  # strings, or lists of token ids

    def stops(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])  # a list once validated

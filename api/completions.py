"""Shaping chat completions as OpenAI does: the whole response, stream chunks and SSE frames."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

from contract.results import assistant_message, http_status
from contract.stream import Event, EventType, join_calls

from .errors import APIError


@dataclass
class Choice:
    """One choice's events, joined."""

    text: list[str] = field(default_factory=list)
    reasoning: list[str] = field(default_factory=list)
    logprobs: list[dict] = field(default_factory=list)
    finish_reason: str | None = None
    usage: dict | None = None
    tool_calls: dict[int, dict] = field(default_factory=dict)
    """Calls by index, their fragments joined (mlx_common/tools.py sends them)."""

    def add(self, event: Event) -> None:
        if event.type == EventType.DELTA:
            self.text.append(event.data.get("text", ""))
            self.reasoning.append(event.data.get("reasoning", ""))
            self.logprobs.extend(event.data.get("logprobs", []))
            join_calls(self.tool_calls, event.data.get("tool_calls", []))
        elif event.type == EventType.DONE:
            self.finish_reason = event.data["finish_reason"]
            self.usage = event.data["usage"]

    def message(self) -> dict:
        calls = [self.tool_calls[i] for i in sorted(self.tool_calls)]
        return assistant_message("".join(self.text), "".join(self.reasoning), calls)


@dataclass
class Completion:
    """Accumulates one request's events — one job per choice (`n`) — into a chat completion."""

    completion_id: str
    model: str
    n: int = 1
    created: int = field(default_factory=lambda: int(time.time()))
    choices: list[Choice] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.choices = self.choices or [Choice() for _ in range(self.n)]

    def add(self, event: Event, index: int = 0) -> None:
        self.choices[index].add(event)

    @property
    def finish_reason(self) -> str | None:
        return self.choices[0].finish_reason

    @property
    def usage(self) -> dict | None:
        return joined_usage([c.usage for c in self.choices])

    def response(self, want_logprobs: bool) -> dict:
        return {
            "id": self.completion_id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": None,
            "choices": [
                {
                    "index": i,
                    "message": choice.message(),
                    "logprobs": {"content": choice.logprobs, "refusal": None} if want_logprobs else None,
                    "finish_reason": choice.finish_reason,
                }
                for i, choice in enumerate(self.choices)
            ],
            "usage": self.usage,
        }

    def chunk(
        self,
        delta: dict,
        *,
        finish_reason: str | None = None,
        logprobs: list | None = None,
        with_usage: bool = False,
        index: int = 0,
    ) -> dict:
        body = {
            "id": self.completion_id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": None,
            "choices": [
                {
                    "index": index,
                    "delta": delta,
                    "logprobs": {"content": logprobs, "refusal": None} if logprobs is not None else None,
                    "finish_reason": finish_reason,
                }
            ],
        }
        if with_usage:
            body["usage"] = None
        return body

    def usage_chunk(self) -> dict:
        body = self.chunk({}, with_usage=True)
        body["choices"], body["usage"] = [], self.usage
        return body


def joined_usage(usages: list[dict | None]) -> dict | None:
    """The usage of n choices of one prompt, as OpenAI counts it: the prompt once, every
    choice's completion tokens."""
    if any(u is None for u in usages):
        return None
    first = usages[0]
    assert first is not None
    if len(usages) == 1:
        return first
    completion = sum(u["completion_tokens"] for u in usages if u)
    joined = {**first, "completion_tokens": completion, "total_tokens": first["prompt_tokens"] + completion}
    details = [u.get("completion_tokens_details") for u in usages if u]
    if all(details):
        joined["completion_tokens_details"] = {
            **details[0],  # type: ignore[dict-item]
            "reasoning_tokens": sum(d.get("reasoning_tokens", 0) for d in details if d),
        }
    return joined


def error_from_event(event: Event) -> APIError:
    """A worker's error or cancel event as the error a client receives."""
    if event.type == EventType.CANCELLED:
        return APIError(503, "the request was cancelled before it finished", code="job_cancelled")
    code = event.data.get("code", "generation_failed")
    status = http_status(code)
    return APIError(
        status,
        event.data.get("message", "generation failed"),
        param=event.data.get("param"),
        code=code,
        error_type="invalid_request_error" if status == 400 else "server_error",
    )


def sse(data: dict | str, event_id: str | None = None) -> str:
    payload = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"), ensure_ascii=False)
    prefix = f"id: {event_id}\n" if event_id else ""
    return f"{prefix}data: {payload}\n\n"


# A comment line alone, with no blank line after it: the openai client dispatches an empty
# event (and fails to parse it) at a blank line once any `id:` has been seen.
SSE_KEEPALIVE = ": keepalive\n"
SSE_DONE = "data: [DONE]\n\n"

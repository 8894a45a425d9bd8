"""Answers of Anthropic's Messages API: a chat job's events as a `message`, or as the stream
of events Anthropic sends (`message_start`; `content_block_start`, `_delta`, `_stop` for
each block; `message_delta`; `message_stop`; `ping` while nothing happens), and errors in
Anthropic's shape. One builder makes both, so a streamed answer, accumulated, is the
non-streamed one.

Blocks come in the order the model writes them: its thinking first, then text, then each
tool call (its input streamed as `input_json_delta` pieces as the worker generates them).
Whitespace alone between calls, or before the first one, makes no text block.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from flask import g, has_request_context

from contract.stream import Event, EventType

from . import request_id
from .anthropic_chat import param_name
from .errors import APIError

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    408: "timeout_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    503: "overloaded_error",  # model loading, worker gone, Redis away: retry later
    504: "timeout_error",
}
PING = {"type": "ping"}


def error_body(error: APIError) -> dict:
    """`{"type": "error", "error": {"type", "message"}}`: the status's type, and a message
    that names the field at fault as the Messages request names it."""
    kind = ERROR_TYPES.get(error.status) or ("invalid_request_error" if error.status < 500 else "api_error")
    message = error.message.replace(": Value error, ", ": ", 1)  # pydantic's words for a ValueError
    if error.param:
        origin = g.get("anthropic_origin") if has_request_context() else None
        # Set once the request was translated: a chat request's field names a Messages field.
        name = param_name(error.param, origin) if origin is not None else error.param
        rest = message.removeprefix(error.param)
        message = f"{name}{rest}" if rest != message else f"{name}: {message}"
    if error.code == "context_length_exceeded":  # the words Anthropic's clients look for
        message = f"prompt is too long: {message}"
    return {"type": "error", "error": {"type": kind, "message": message}, "request_id": request_id.current()}


def sse_event(data: dict) -> str:
    """One Server-Sent Event as Anthropic frames them: the type twice, as `event:` and in the data."""
    return f"event: {data['type']}\ndata: {json.dumps(data, separators=(',', ':'), ensure_ascii=False)}\n\n"


def error_frame(error: APIError, event_id: str | None = None) -> str:
    return sse_event(error_body(error))


@dataclass
class Block:
    kind: str
    """`thinking`, `text` or `tool_use`."""
    text: str = ""
    """The thinking, the text, or the tool input's JSON text."""
    id: str = ""
    name: str = ""
    call: int = -1
    """The worker's index of the call a tool_use block holds."""

    def content(self) -> dict:
        if self.kind == "thinking":
            return {"type": "thinking", "thinking": self.text, "signature": ""}
        if self.kind == "text":
            return {"type": "text", "text": self.text}
        try:  # a call cut short by max_tokens has no whole input
            value = json.loads(self.text) if self.text else {}
        except ValueError:
            value = {}
        return {"type": "tool_use", "id": self.id, "name": self.name, "input": value if isinstance(value, dict) else {}}


class MessageBuilder:
    """Turns one job's events into Anthropic's stream events (`feed`) and, at the end, the
    whole `message` (`message()`)."""

    def __init__(self, message_id: str, model: str, max_tokens: int, show_thinking: bool = True):
        self.message_id, self.model, self.max_tokens = message_id, model, max_tokens
        self.show_thinking = show_thinking
        """False (`display: omitted`): thinking blocks come back empty."""
        self.blocks: list[Block] = []
        self.open: Block | None = None
        self.space = ""
        """Whitespace held back until text that is more than whitespace follows it."""
        self.start: dict = {}
        self.usage: dict | None = None
        """The job's usage (OpenAI's fields), once it is done."""
        self.finish_reason: str | None = None
        self.matched: str | None = None

    def feed(self, event: Event | None) -> list[dict]:
        if event is None:
            return [PING]
        if event.type == EventType.START:
            self.start = event.data
            head = {**self.message(), "content": [], "stop_reason": None, "stop_sequence": None}
            return [{"type": "message_start", "message": head}]
        if event.type == EventType.DELTA:
            return self._delta(event.data)
        if event.type == EventType.DONE:
            return self._done(event.data)
        return []

    def add(self, event: Event) -> None:
        """Take an event for the non-streamed answer."""
        self.feed(event)

    def message(self) -> dict:
        stop_reason = self.stop_reason()
        return {
            "id": self.message_id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": [b.content() for b in self.blocks],
            "stop_reason": stop_reason,
            "stop_sequence": self.matched if stop_reason == "stop_sequence" else None,
            "usage": self.anthropic_usage(),
        }

    def stop_reason(self) -> str | None:
        if self.finish_reason is None:
            return None
        if self.finish_reason == "tool_calls":
            return "tool_use"
        if self.finish_reason == "length":
            # The API capped max_tokens by what the prompt leaves of the context (api/intake.py).
            done = (self.usage or {}).get("completion_tokens", 0)
            return "max_tokens" if done >= self.max_tokens else "model_context_window_exceeded"
        return "stop_sequence" if self.matched is not None else "end_turn"

    def anthropic_usage(self) -> dict:
        """Anthropic counts prompt tokens read from the cache apart from the others."""
        usage = self.usage or {}
        prompt = usage.get("prompt_tokens", self.start.get("prompt_tokens", 0))
        cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens", self.start.get("cached_tokens", 0))
        counts = {
            "input_tokens": prompt - cached,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": cached,
            "output_tokens": usage.get("completion_tokens", 0),
        }
        details = usage.get("completion_tokens_details")
        if details is not None:
            counts["output_tokens_details"] = {"thinking_tokens": details.get("reasoning_tokens", 0)}
        return counts

    # --- blocks ---

    def _delta(self, data: dict) -> list[dict]:
        out: list[dict] = []
        if data.get("reasoning"):
            out += self._extend("thinking", data["reasoning"] if self.show_thinking else "")
        text, calls = data.get("text", ""), data.get("tool_calls", [])
        if self.open is not None and self.open.kind == "tool_use":
            return out + self._calls(calls) + self._text(text)  # a call's end, then what follows it
        return out + self._text(text) + self._calls(calls)

    def _text(self, text: str) -> list[dict]:
        if not text:
            return []
        if self.open is None or self.open.kind != "text":
            if not text.strip():
                self.space += text
                return []
            text, self.space = self.space + text, ""
        return self._extend("text", text)

    def _calls(self, fragments: list[dict]) -> list[dict]:
        out: list[dict] = []
        for fragment in fragments:
            function = fragment.get("function", {})
            if fragment.get("id"):  # a call's first fragment names it
                self.space = ""
                tool_id = "toolu_" + fragment["id"].removeprefix("call_")
                out += self._open(Block("tool_use", id=tool_id, name=function.get("name", ""), call=fragment["index"]))
            piece = function.get("arguments", "")
            block = next((b for b in reversed(self.blocks) if b.call == fragment["index"]), None)
            if piece and block is not None:
                block.text += piece
                delta = {"type": "input_json_delta", "partial_json": piece}
                out.append({"type": "content_block_delta", "index": self.blocks.index(block), "delta": delta})
        return out

    def _extend(self, kind: str, piece: str) -> list[dict]:
        out = [] if self.open is not None and self.open.kind == kind else self._open(Block(kind))
        assert self.open is not None
        if not piece:
            return out
        self.open.text += piece
        delta = {"type": f"{kind}_delta", kind: piece}  # thinking_delta or text_delta
        return [*out, {"type": "content_block_delta", "index": len(self.blocks) - 1, "delta": delta}]

    def _open(self, block: Block) -> list[dict]:
        out = self._close()
        self.blocks.append(block)
        self.open = block
        start = block.content() if block.kind != "tool_use" else {**block.content(), "input": {}}
        return [*out, {"type": "content_block_start", "index": len(self.blocks) - 1, "content_block": start}]

    def _close(self) -> list[dict]:
        if self.open is None:
            return []
        index, kind, self.open = len(self.blocks) - 1, self.open.kind, None
        out = [{"type": "content_block_delta", "index": index, "delta": {"type": "signature_delta", "signature": ""}}]
        return [*(out if kind == "thinking" else []), {"type": "content_block_stop", "index": index}]

    def _done(self, data: dict) -> list[dict]:
        out: list[dict] = []
        if self.space and not any(b.kind in ("text", "tool_use") for b in self.blocks):
            out += self._extend("text", self.space)  # an answer of whitespace alone is still the answer
        self.space = ""
        out += self._close()
        self.finish_reason, self.usage = data.get("finish_reason"), data.get("usage") or {}
        self.matched = data.get("stop_sequence")
        stop_reason = self.stop_reason()
        delta = {"stop_reason": stop_reason, "stop_sequence": self.matched if stop_reason == "stop_sequence" else None}
        ending = {"type": "message_delta", "delta": delta, "usage": self.anthropic_usage()}
        return [*out, ending, {"type": "message_stop"}]

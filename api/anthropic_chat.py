"""Translating Anthropic's Messages requests (api/anthropic_request.py) into chat completion
requests (api/schemas.py), which the chat path then validates, routes and runs; and telling
errors about those in the Messages API's names.

How the two APIs meet: the system prompt is a system message; a user turn's `tool_result`
blocks are `tool` messages (an `is_error` result reads "Error: ..."), its text and images one
user message; an assistant turn's `tool_use` blocks are its calls (input as JSON text) and
its earlier `thinking` is dropped, as chat templates drop earlier reasoning; consecutive
turns of one role are one turn (as Anthropic combines them); the text blocks of a turn are
joined with a newline.
"""

from __future__ import annotations

import json
import re
from typing import Any

from .anthropic_request import (
    ImageBlock,
    InputMessage,
    MessagesInput,
    MessagesRequest,
    TextBlock,
    ThinkingDisabled,
    ThinkingEnabled,
    ToolChoiceAny,
    ToolChoiceNone,
    ToolChoiceTool,
    ToolResultBlock,
    ToolUseBlock,
)


def to_chat(req: MessagesInput, max_tokens: int = 1) -> tuple[dict, list[str]]:
    """The chat completion request (a body for api/schemas.py) that runs `req`, and for each
    of its messages, where it came from (`system`, `messages.N`): errors about the chat
    request are told in the Messages API's names (`param_name`). `max_tokens` is for
    count_tokens, which has none."""
    messages, origin = _turns(req)
    body: dict[str, Any] = {"model": req.model, "messages": messages, "max_tokens": max_tokens}
    if isinstance(req, MessagesRequest):
        body["max_tokens"] = req.max_tokens
        given = {"temperature": req.temperature, "top_p": req.top_p, "top_k": req.top_k, "stop": req.stop_sequences}
        body.update({k: v for k, v in given.items() if v is not None})
    if req.tools is not None:
        body["tools"] = [
            {
                "type": "function",
                "function": {"name": t.name, "description": t.description, "parameters": t.input_schema},
            }
            for t in req.tools
        ]
    body.update(_tool_choice(req.tool_choice))
    if isinstance(req.thinking, ThinkingEnabled):
        body.update(enable_thinking=True, max_reasoning_tokens=req.thinking.budget_tokens)
    elif isinstance(req.thinking, ThinkingDisabled):
        body["enable_thinking"] = False
    config = req.output_config
    if config is not None and config.effort is not None:
        body["reasoning_effort"] = "high" if config.effort in ("xhigh", "max") else config.effort
    if config is not None and config.format is not None:
        spec = {"name": "output", "schema": config.format.schema_, "strict": True}
        body["response_format"] = {"type": "json_schema", "json_schema": spec}
    return body, origin


def _tool_choice(choice: Any) -> dict:
    if choice is None:
        return {}
    if isinstance(choice, ToolChoiceNone):
        return {"tool_choice": "none"}
    options: dict[str, Any] = {"parallel_tool_calls": False} if choice.disable_parallel_tool_use else {}
    if isinstance(choice, ToolChoiceTool):
        return {"tool_choice": {"type": "function", "function": {"name": choice.name}}, **options}
    return {"tool_choice": "required" if isinstance(choice, ToolChoiceAny) else "auto", **options}


def _turns(req: MessagesInput) -> tuple[list[dict], list[str]]:
    messages: list[dict] = []
    origin: list[str] = []
    system = _joined(req.system) if req.system is not None else ""
    if system:
        messages.append({"role": "system", "content": system})
        origin.append("system")
    for i, role, blocks in _merged(req.messages):
        if role == "system":
            turn = [{"role": "system", "content": _joined(blocks)}]
        elif role == "assistant":
            turn = [_assistant(blocks)]
        else:
            turn = _user(blocks)
        messages += turn
        origin += [f"messages.{i}"] * len(turn)
    return messages, origin


def _merged(messages: list[InputMessage]) -> list[tuple[int, str, list]]:
    """Consecutive user (or assistant) turns as one, as Anthropic combines them: (index of
    the first, role, their blocks)."""
    turns: list[tuple[int, str, list]] = []
    for i, message in enumerate(messages):
        if turns and turns[-1][1] == message.role != "system":
            turns[-1][2].extend(message.content)
        else:
            turns.append((i, message.role, list(message.content)))
    return turns


def _joined(blocks: list) -> str:
    return "\n".join(b.text for b in blocks)


def _assistant(blocks: list) -> dict:
    texts = [b for b in blocks if isinstance(b, TextBlock)]
    calls = [
        {"id": b.id, "type": "function", "function": {"name": b.name, "arguments": json.dumps(b.input)}}
        for b in blocks
        if isinstance(b, ToolUseBlock)
    ]
    message: dict[str, Any] = {"role": "assistant", "content": _joined(texts) if texts or not calls else None}
    if calls:
        message["tool_calls"] = calls
    return message


def _user(blocks: list) -> list[dict]:
    """Tool results as `tool` messages; the text and images between them as user messages
    (text only: one string; with images: the chat path's parts, in order)."""
    out: list[dict] = []
    parts: list = []

    def flush() -> None:
        if not parts:
            return
        if all(isinstance(p, TextBlock) for p in parts):
            out.append({"role": "user", "content": _joined(parts)})
        else:
            out.append({"role": "user", "content": [_part(p) for p in parts]})
        parts.clear()

    for block in blocks:
        if isinstance(block, ToolResultBlock):
            flush()
            out.append({"role": "tool", "tool_call_id": block.tool_use_id, "content": block.text})
        else:
            parts.append(block)
    flush()
    return out


def _part(block: TextBlock | ImageBlock) -> dict:
    if isinstance(block, TextBlock):
        return {"type": "text", "text": block.text}
    return {"type": "image_url", "image_url": {"url": block.url}}


PARAMS = [
    (re.compile(r"^stop(\.\d+)?"), "stop_sequences"),
    (re.compile(r"^tools\.(\d+)\.function\.parameters"), r"tools.\1.input_schema"),
    (re.compile(r"^tools\.(\d+)\.function"), r"tools.\1"),
    (re.compile(r"^tool_choice\.function"), "tool_choice"),
    (re.compile(r"^parallel_tool_calls"), "tool_choice.disable_parallel_tool_use"),
    (re.compile(r"^max_reasoning_tokens"), "thinking.budget_tokens"),
    (re.compile(r"^enable_thinking"), "thinking"),
    (re.compile(r"^reasoning_effort"), "output_config.effort"),
    (re.compile(r"^response_format(\.json_schema)?"), "output_config.format"),
]
"""Chat request fields in the Messages API's names (`messages.N` is mapped by origin)."""


def param_name(param: str, origin: list[str]) -> str:
    """A chat request's `param` as the Messages request names it."""
    found = re.match(r"^messages\.(\d+)", param)
    if found:
        n = int(found.group(1))
        return origin[n] if n < len(origin) else "messages"
    for pattern, name in PARAMS:
        if pattern.match(param):
            return pattern.sub(name, param, count=1)
    return param

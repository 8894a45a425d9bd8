"""Tools on chat requests: `tools`, `tool_choice`, `parallel_tool_calls`, and the calls in a
conversation's history — checked here, turned into the job's fields (contract.payloads).

A function's `parameters` must be a schema the grammar engine can enforce (the worker
generates every call under it, mlx_common/tools.py): one it cannot is a 400 naming it, as for
`response_format` (api/structured.py). The legacy `functions` / `function_call` are refused
with a pointer to their replacements.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from contract.payloads import Function

from .errors import APIError
from .structured import check_schema

STRICT = ConfigDict(extra="ignore", strict=True)
MAX_TOOLS = 128
"""OpenAI's limit."""


class FunctionDef(BaseModel):
    model_config = STRICT
    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    description: str | None = Field(None, max_length=10_000)
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ToolDef(BaseModel):
    model_config = STRICT
    type: Literal["function"]
    function: FunctionDef


class NamedFunction(BaseModel):
    model_config = STRICT
    name: str = Field(min_length=1, max_length=64)


class NamedToolChoice(BaseModel):
    model_config = STRICT
    type: Literal["function"]
    function: NamedFunction


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice


class CallFunction(BaseModel):
    model_config = STRICT
    name: str = Field(min_length=1, max_length=64)
    arguments: str = Field(max_length=1_000_000)


class RequestToolCall(BaseModel):
    """A call in an assistant message of the history."""

    model_config = STRICT
    id: str = Field(min_length=1, max_length=256)
    type: Literal["function"] = "function"
    function: CallFunction


def job_tools(tools: list[ToolDef] | None, choice: ToolChoice | None, parallel: bool | None) -> dict:
    """The job's `tools`, `tool_choice`, `parallel_tool_calls` for a request, checked."""
    if tools is None:
        if choice not in (None, "none"):
            raise APIError(400, "tool_choice needs tools", param="tool_choice", code="invalid_value")
        return {}
    if len(tools) > MAX_TOOLS:
        raise APIError(400, f"at most {MAX_TOOLS} tools", param="tools", code="invalid_value")
    names = [t.function.name for t in tools]
    if len(set(names)) != len(names):
        raise APIError(400, "tool names must be distinct", param="tools", code="invalid_value")
    functions = []
    for i, tool in enumerate(tools):
        parameters = tool.function.parameters
        if parameters is None:
            parameters = {"type": "object", "properties": {}, "additionalProperties": False}
        check_schema(parameters, f"tools.{i}.function.parameters", code="invalid_tools")
        functions.append(
            Function(name=tool.function.name, description=tool.function.description, parameters=parameters)
        )
    if isinstance(choice, NamedToolChoice):
        if choice.function.name not in names:
            raise APIError(
                400,
                f"tool_choice names {choice.function.name!r}, which is not among the tools",
                param="tool_choice",
                code="invalid_value",
            )
        chosen = choice.function.name
    else:
        chosen = choice or "auto"
    return {"tools": functions, "tool_choice": chosen, "parallel_tool_calls": parallel is not False}


def refuse_legacy(body_fields: set[str]) -> None:
    for legacy, modern in (("functions", "tools"), ("function_call", "tool_choice")):
        if legacy in body_fields:
            raise APIError(
                400,
                f"{legacy} is OpenAI's deprecated form and is not supported; send {modern} instead",
                param=legacy,
                code="unsupported_parameter",
            )

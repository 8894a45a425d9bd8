"""The Responses API's request (`POST /v1/responses`), validated, and its translation into a
chat completion request: one conversation of messages for the chat path (api/intake.py),
so Responses reuse routing, images, tools, formats and reasoning as they are.

Unlike the chat body (which ignores unknown fields, as OpenAI clients send many), fields we do
not know are refused: the Responses API is large, and a request asking for something we
cannot do (hosted tools, conversations, truncation) must not be answered as if we did it.
"""

from __future__ import annotations

import secrets
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .schemas import SEED_RANGE

FORBID = ConfigDict(extra="forbid", strict=True)
ITEM = ConfigDict(extra="ignore", strict=True)
"""Input items as an earlier response returned them carry fields we have no use for
(`status`, `annotations`, `logprobs`): taken, not refused."""


class ResponseInputText(BaseModel):
    model_config = ITEM
    type: Literal["input_text", "output_text"]
    text: str


class ResponseInputImage(BaseModel):
    model_config = ITEM
    type: Literal["input_image"]
    image_url: str = Field(min_length=1, description="a data URL (base64); remote URLs are refused")
    detail: Literal["auto", "low", "high"] = "auto"


Part = Annotated[ResponseInputText | ResponseInputImage, Field(discriminator="type")]


class ResponseMessageItem(BaseModel):
    model_config = ITEM
    type: Literal["message"] = "message"
    id: str | None = None
    role: Literal["user", "assistant", "system", "developer"]
    content: str | list[Part]


class ResponseFunctionCall(BaseModel):
    model_config = ITEM
    type: Literal["function_call"]
    id: str | None = None
    call_id: str = Field(min_length=1, max_length=256)
    name: str = Field(min_length=1, max_length=64)
    arguments: str = Field(max_length=1_000_000)


class ResponseFunctionCallOutput(BaseModel):
    model_config = ITEM
    type: Literal["function_call_output"]
    id: str | None = None
    call_id: str = Field(min_length=1, max_length=256)
    output: str | list[ResponseInputText]


class ResponseReasoningItem(BaseModel):
    """An earlier turn's reasoning, sent back by agents: kept in the item list, not rendered
    (chat templates drop past turns' thinking)."""

    model_config = ITEM
    type: Literal["reasoning"]
    id: str | None = None
    summary: list[dict] = []
    content: list[dict] | None = None


Item = Annotated[
    ResponseMessageItem | ResponseFunctionCall | ResponseFunctionCallOutput | ResponseReasoningItem,
    Field(discriminator="type"),
]


class ResponseFunctionTool(BaseModel):
    model_config = FORBID
    type: Literal["function"]
    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    description: str | None = Field(None, max_length=10_000)
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ResponseNamedFunction(BaseModel):
    model_config = FORBID
    type: Literal["function"]
    name: str = Field(min_length=1, max_length=64)


class ResponseTextFormat(BaseModel):
    """`text.format`: text, json_object, or json_schema with its fields at this level."""

    model_config = FORBID
    type: Literal["text", "json_object", "json_schema"]
    name: str | None = Field(None, max_length=64)
    schema_: dict[str, Any] | bool | None = Field(None, alias="schema")
    strict: bool | None = None
    description: str | None = None


class ResponseTextConfig(BaseModel):
    model_config = FORBID
    format: ResponseTextFormat | None = None
    verbosity: Literal["medium"] | None = Field(None, description="only the default: length is the model's")


class ResponseReasoningConfig(BaseModel):
    model_config = FORBID
    effort: Literal["none", "minimal", "low", "medium", "high"] | None = None
    summary: Literal["auto", "concise", "detailed"] | None = Field(
        None, description="accepted; no summary is written: the reasoning item carries the whole reasoning text"
    )


class ResponsesRequest(BaseModel):
    model_config = FORBID

    model: str = Field(min_length=1, max_length=256)
    input: list[Item] | str | None = None
    instructions: str | None = None
    previous_response_id: str | None = Field(None, max_length=64)
    tools: list[ResponseFunctionTool] | None = Field(None, max_length=128)
    tool_choice: Literal["none", "auto", "required"] | ResponseNamedFunction | None = None
    parallel_tool_calls: bool | None = None
    text: ResponseTextConfig | None = None
    reasoning: ResponseReasoningConfig | None = None
    max_output_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    seed: int | None = Field(None, ge=SEED_RANGE[0], le=SEED_RANGE[1], description="extension: reproducible sampling")
    metadata: dict[str, Annotated[str, Field(max_length=512)]] | None = Field(None, max_length=16)
    store: bool = True
    stream: bool = False
    background: bool = False
    user: str | None = None
    safety_identifier: str | None = None
    prompt_cache_key: str | None = Field(None, description="accepted: prompt prefixes are cached without it")
    service_tier: Literal["auto", "default"] | None = None
    truncation: Literal["disabled"] | None = Field(None, description="only disabled: a too-long input is a 400")
    include: list[Literal["reasoning.encrypted_content"]] | None = Field(
        None, description="accepted; reasoning items carry their text, never encrypted content"
    )

    @model_validator(mode="before")
    @classmethod
    def _items_default_to_messages(cls, data: Any) -> Any:
        """An input item with a role and no type is a message (OpenAI's easy input form)."""
        if isinstance(data, dict) and isinstance(data.get("input"), list):
            data = {**data, "input": [_typed(i) for i in data["input"]]}
        return data

    @model_validator(mode="after")
    def _something_to_answer(self) -> ResponsesRequest:
        if not self.input and not self.previous_response_id:
            raise ValueError("input is required (or previous_response_id with new input)")
        if self.background and not self.store:
            raise ValueError("background responses must be stored (store: true)")
        return self

    def items(self) -> list[dict]:
        """This request's input as items, each with an id (what input_items lists)."""
        if self.input is None:
            return []
        if isinstance(self.input, str):
            return [{"type": "message", "id": _item_id("msg"), "role": "user", "content": self.input}]
        out = []
        for item in self.input:
            data = item.model_dump(mode="json", by_alias=True, exclude_none=True)
            data["id"] = data.get("id") or _item_id({"message": "msg", "reasoning": "rs"}.get(item.type, "fc"))
            out.append(data)
        return out


def _typed(item: Any) -> Any:
    if isinstance(item, dict) and "type" not in item and "role" in item:
        return {"type": "message", **item}
    return item


def _item_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(12)}"


def chat_body(req: ResponsesRequest, conversation: list[dict]) -> dict:
    """The chat completion request for `conversation` (items, the new input last) under the
    Responses request's options."""
    messages: list[dict] = [{"role": "system", "content": req.instructions}] if req.instructions else []
    for item in conversation:
        kind = item.get("type", "message")
        if kind == "message":
            messages.append({"role": item["role"], "content": _content(item["content"])})
        elif kind == "function_call":
            call = {
                "id": item["call_id"],
                "type": "function",
                "function": {"name": item["name"], "arguments": item["arguments"]},
            }
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant" and "tool_calls" in last:
                last["tool_calls"].append(call)  # parallel calls: one assistant turn
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            output = item["output"]
            text = output if isinstance(output, str) else "".join(p["text"] for p in output)
            messages.append({"role": "tool", "tool_call_id": item["call_id"], "content": text})
    body: dict = {"model": req.model, "messages": messages}
    for name, value in (
        ("max_tokens", req.max_output_tokens),
        ("temperature", req.temperature),
        ("top_p", req.top_p),
        ("seed", req.seed),
        ("parallel_tool_calls", req.parallel_tool_calls),
    ):
        if value is not None:
            body[name] = value
    if req.tools:
        body["tools"] = [
            {"type": "function", "function": t.model_dump(exclude_none=True, exclude={"type"})} for t in req.tools
        ]
    if req.tool_choice is not None:
        choice = req.tool_choice
        body["tool_choice"] = (
            choice if isinstance(choice, str) else {"type": "function", "function": {"name": choice.name}}
        )
    fmt = req.text.format if req.text else None
    if fmt is not None and fmt.type == "json_schema":
        body["response_format"] = {
            "type": "json_schema",
            "json_schema": {
                k: v
                for k, v in (
                    ("name", fmt.name or "response"),
                    ("schema", fmt.schema_),
                    ("strict", fmt.strict),
                    ("description", fmt.description),
                )
                if v is not None
            },
        }
    elif fmt is not None:
        body["response_format"] = {"type": fmt.type}
    if req.reasoning and req.reasoning.effort:
        body["reasoning_effort"] = req.reasoning.effort
    return body


def _content(content: str | list[dict]) -> str | list[dict]:
    if isinstance(content, str):
        return content
    parts: list[dict] = []
    for part in content:
        if part["type"] == "input_image":
            parts.append({"type": "image_url", "image_url": {"url": part["image_url"], "detail": part["detail"]}})
        else:
            parts.append({"type": "text", "text": part["text"]})
    return parts

"""`response_format` → the llguidance grammar a job's worker enforces (mlx_common/grammar.py).

Checked here, before anything is queued: a schema or grammar llguidance cannot enforce is a
400 `invalid_response_format` naming the part, never a format silently ignored. llguidance
needs no tokenizer to compile and check a grammar; the worker compiles it again against its
model's tokenizer (and refuses, the same way, in the rare case that fails).

    {"type": "text"}                                  → unconstrained
    {"type": "json_object"}                           → any JSON object
    {"type": "json_schema", "json_schema": {...}}     → JSON valid against `schema`
    {"type": "regex", "pattern": "..."}               → extension: text matching the regex
    {"type": "grammar", "grammar": "..."}             → extension: a Lark grammar (llguidance's dialect)
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

import llguidance
from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag

from .errors import APIError

STRICT = ConfigDict(extra="forbid", strict=True)
JSON_OPTIONS: Any = {"whitespace_flexible": False}
"""Compact JSON (`{"a":1}`): no run of whitespace a small model could loop in (OpenAI's
output is compact too)."""
MAX_GRAMMAR_CHARS = 100_000


class TextFormat(BaseModel):
    model_config = STRICT
    type: Literal["text"]


class JSONObjectFormat(BaseModel):
    model_config = STRICT
    type: Literal["json_object"]


class JSONSchemaSpec(BaseModel):
    model_config = STRICT
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    description: str | None = Field(None, max_length=10_000)
    schema_: dict[str, Any] | bool | None = Field(None, alias="schema")
    strict: bool | None = None


class JSONSchemaFormat(BaseModel):
    model_config = STRICT
    type: Literal["json_schema"]
    json_schema: JSONSchemaSpec


class RegexFormat(BaseModel):
    model_config = STRICT
    type: Literal["regex"]
    pattern: str = Field(min_length=1, max_length=MAX_GRAMMAR_CHARS)


class GrammarFormat(BaseModel):
    model_config = STRICT
    type: Literal["grammar"]
    grammar: str = Field(min_length=1, max_length=MAX_GRAMMAR_CHARS)


FORMATS = {"text": TextFormat, "json_object": JSONObjectFormat, "json_schema": JSONSchemaFormat,
           "regex": RegexFormat, "grammar": GrammarFormat}  # fmt: skip


def _tag(value: Any) -> str | None:
    # Tags that are not identifiers stay out of error paths (api/errors.py keeps only
    # identifiers), so an error reads `response_format.json_schema.name`, not
    # `response_format.json_schema.json_schema.name`.
    kind = value.get("type") if isinstance(value, dict) else getattr(value, "type", None)
    return f"type={kind}" if isinstance(kind, str) and kind in FORMATS else None


ResponseFormat = Annotated[
    Annotated[TextFormat, Tag("type=text")]
    | Annotated[JSONObjectFormat, Tag("type=json_object")]
    | Annotated[JSONSchemaFormat, Tag("type=json_schema")]
    | Annotated[RegexFormat, Tag("type=regex")]
    | Annotated[GrammarFormat, Tag("type=grammar")],
    Discriminator(
        _tag,
        custom_error_type="invalid_value",
        custom_error_message=f"response_format.type must be one of {', '.join(FORMATS)}",
    ),
]


def grammar_for(fmt: BaseModel | None) -> str | None:
    """The grammar that enforces `fmt` (None: unconstrained); 400 when it cannot be enforced."""
    if fmt is None or isinstance(fmt, TextFormat):
        return None
    if isinstance(fmt, JSONObjectFormat):
        return _checked(schema_grammar({"type": "object"}), "response_format")
    if isinstance(fmt, JSONSchemaFormat):
        schema = fmt.json_schema.schema_
        if schema is None:
            schema = {}  # OpenAI: a missing schema is any JSON value
        if len(json.dumps(schema)) > MAX_GRAMMAR_CHARS:
            raise _invalid(f"the schema is longer than {MAX_GRAMMAR_CHARS} characters", "response_format.json_schema")
        return _checked(schema_grammar(schema), "response_format.json_schema.schema")
    if isinstance(fmt, RegexFormat):
        return _checked(llguidance.LLMatcher.grammar_from_regex(fmt.pattern), "response_format.pattern")
    assert isinstance(fmt, GrammarFormat)
    return _checked(llguidance.LLMatcher.grammar_from_lark(fmt.grammar), "response_format.grammar")


def schema_grammar(schema: dict | bool) -> str:
    try:  # a boolean schema goes as its JSON text (true: anything, false: nothing)
        text = schema if isinstance(schema, dict) else json.dumps(schema)
        return llguidance.LLMatcher.grammar_from_json_schema(text, overrides=JSON_OPTIONS)
    except ValueError as exc:
        raise _invalid(str(exc), "response_format.json_schema.schema") from None


def check_schema(schema: dict, param: str, code: str = "invalid_response_format") -> None:
    """400 when `schema` cannot be enforced (a tool's parameters, api/tools.py)."""
    try:
        grammar = llguidance.LLMatcher.grammar_from_json_schema(schema, overrides=JSON_OPTIONS)
    except ValueError as exc:
        raise _invalid(str(exc), param, code) from None
    _checked(grammar, param, code)


def _checked(grammar: str, param: str, code: str = "invalid_response_format") -> str:
    is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(grammar)
    if is_error:
        raise _invalid(messages[0] if messages else "the grammar is not valid", param, code)
    return grammar


def _invalid(message: str, param: str, code: str = "invalid_response_format") -> APIError:
    return APIError(400, f"{param} cannot be enforced: {message[:500]}", param=param, code=code)

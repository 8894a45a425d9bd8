"""JSON schemas of the kinds OpenAI's strict mode accepts (and a few it does not), each one
an answer must validate against (tests/test_structured.py). Strings and arrays are bounded
where a tiny random-weight model would otherwise ramble until max_tokens: a random model
closes a free string only when it happens to pick `"` among ~400 tokens."""

from __future__ import annotations

WORD = {"type": "string", "maxLength": 6}
SMALL = {"type": "integer", "minimum": 0, "maximum": 99}

SCHEMAS: dict[str, dict] = {
    "flat": {
        "type": "object",
        "properties": {"name": WORD, "age": SMALL, "ok": {"type": "boolean"}},
        "required": ["name", "age", "ok"],
        "additionalProperties": False,
    },
    "nested": {
        "type": "object",
        "properties": {
            "user": {
                "type": "object",
                "properties": {"id": SMALL, "tag": WORD},
                "required": ["id", "tag"],
                "additionalProperties": False,
            }
        },
        "required": ["user"],
        "additionalProperties": False,
    },
    "enum": {
        "type": "object",
        "properties": {"color": {"type": "string", "enum": ["red", "green", "blue"]}},
        "required": ["color"],
        "additionalProperties": False,
    },
    "mixed_enum": {"type": "object", "properties": {"v": {"enum": [1, "a", None, True]}}, "required": ["v"]},
    "const": {"type": "object", "properties": {"kind": {"const": "point"}, "x": SMALL}, "required": ["kind", "x"]},
    "bounded_array": {
        "type": "object",
        "properties": {"xs": {"type": "array", "items": SMALL, "minItems": 1, "maxItems": 3}},
        "required": ["xs"],
        "additionalProperties": False,
    },
    "array_of_objects": {
        "type": "object",
        "properties": {
            "items": {
                "type": "array",
                "maxItems": 2,
                "items": {
                    "type": "object",
                    "properties": {"k": WORD},
                    "required": ["k"],
                    "additionalProperties": False,
                },
            }
        },
        "required": ["items"],
    },
    "matrix": {
        "type": "array",
        "maxItems": 2,
        "items": {"type": "array", "items": SMALL, "maxItems": 2},
    },
    "ref": {
        "$defs": {"point": {"type": "object", "properties": {"x": SMALL, "y": SMALL}, "required": ["x", "y"]}},
        "type": "object",
        "properties": {"a": {"$ref": "#/$defs/point"}, "b": {"$ref": "#/$defs/point"}},
        "required": ["a", "b"],
        "additionalProperties": False,
    },
    "definitions_ref": {
        "definitions": {"id": {"type": "integer", "minimum": 1, "maximum": 9}},
        "type": "object",
        "properties": {"id": {"$ref": "#/definitions/id"}},
        "required": ["id"],
    },
    "any_of": {
        "type": "object",
        "properties": {"v": {"anyOf": [WORD, SMALL, {"type": "boolean"}]}},
        "required": ["v"],
    },
    "one_of": {
        "type": "object",
        "properties": {"shape": {"oneOf": [{"const": "circle"}, {"const": "square"}]}},
        "required": ["shape"],
    },
    "all_of": {
        "allOf": [
            {"type": "object", "properties": {"a": SMALL}, "required": ["a"]},
            {"type": "object", "properties": {"b": WORD}, "required": ["b"]},
        ]
    },
    "nullable": {
        "type": "object",
        "properties": {"note": {"type": ["string", "null"], "maxLength": 5}},
        "required": ["note"],
        "additionalProperties": False,
    },
    "numbers": {
        "type": "object",
        "properties": {
            "t": {"type": "number", "minimum": -5, "maximum": 5},
            "n": {"type": "integer", "exclusiveMinimum": 0, "exclusiveMaximum": 10},
        },
        "required": ["t", "n"],
    },
    "pattern": {
        "type": "object",
        "properties": {"code": {"type": "string", "pattern": "^[A-Z]{2}-[0-9]{3}$"}},
        "required": ["code"],
    },
    "string_bounds": {
        "type": "object",
        "properties": {"s": {"type": "string", "minLength": 2, "maxLength": 4}},
        "required": ["s"],
    },
    "optional_fields": {
        "type": "object",
        "properties": {"a": SMALL, "b": WORD, "c": {"type": "boolean"}},
        "required": ["a"],
        "additionalProperties": False,
    },
    "top_level_array": {"type": "array", "items": {"enum": ["x", "y"]}, "minItems": 2, "maxItems": 4},
    "top_level_enum": {"enum": ["yes", "no"]},
    "date": {"type": "object", "properties": {"d": {"type": "string", "format": "date"}}, "required": ["d"]},
    "deep": {
        "type": "object",
        "properties": {
            "a": {
                "type": "object",
                "properties": {
                    "b": {
                        "type": "object",
                        "properties": {"c": {"type": "array", "items": {"enum": [1, 2]}, "maxItems": 2}},
                        "required": ["c"],
                    }
                },
                "required": ["b"],
            }
        },
        "required": ["a"],
    },
}


def _closed(schema):
    """Objects without `additionalProperties` take none (as OpenAI's strict mode demands):
    the JSON Schema default allows any extra key, whose free-text name a random model
    would ramble in."""
    if isinstance(schema, dict):
        # allOf's parts stay open: each closed one would forbid the other's properties.
        schema = {k: v if k == "allOf" else _closed(v) for k, v in schema.items()}
        if schema.get("type") == "object" and "additionalProperties" not in schema:
            schema["additionalProperties"] = False
    elif isinstance(schema, list):
        schema = [_closed(v) for v in schema]
    return schema


SCHEMAS = {name: _closed(schema) for name, schema in SCHEMAS.items()}

UNSUPPORTED: dict[str, dict] = {
    "not": {"type": "object", "properties": {"a": {"not": {"type": "string"}}}},
    "if_then": {"type": "object", "if": {"type": "object"}, "then": {"required": ["a"]}},
    "unknown_format": {"type": "string", "format": "my-own-format"},
    "bad_ref": {"type": "object", "properties": {"a": {"$ref": "#/$defs/missing"}}},
}
"""Schemas llguidance cannot enforce: refused with a 400, never answered unconstrained."""

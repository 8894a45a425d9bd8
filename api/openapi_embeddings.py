"""The OpenAPI description of `POST /v1/embeddings` (api/embeddings.py); `api.openapi.build`
merges these paths and schemas."""

from __future__ import annotations

from contract.settings import Settings

from .embeddings_request import EmbeddingRequest
from .openapi_builders import INT, NUM, STR, OperationScope, array, errors, json_response, obj, operation, ref


def schemas(settings: Settings) -> dict:
    request = EmbeddingRequest.model_json_schema(ref_template="#/components/schemas/{model}")
    request["properties"]["input"] = {
        "description": "A string, a list of strings, a list of token ids, or a list of token-id lists "
        f"(at most {settings.max_embed_inputs} inputs, none empty)",
        "anyOf": [
            {"type": "string", "minLength": 1},
            {"type": "array", "items": {"type": "string", "minLength": 1}, "minItems": 1},
            {"type": "array", "items": {"type": "integer", "minimum": 0}, "minItems": 1},
            {
                "type": "array",
                "items": {"type": "array", "items": {"type": "integer", "minimum": 0}, "minItems": 1},
                "minItems": 1,
            },
        ],
    }
    embedding = obj(
        ["object", "index", "embedding"],
        object={"const": "embedding"},
        index=INT,
        embedding={"anyOf": [array(NUM), {"type": "string", "description": "base64 of little-endian float32"}]},
    )
    usage = obj(["prompt_tokens", "total_tokens"], prompt_tokens=INT, total_tokens=INT)
    return {
        "EmbeddingRequest": request,
        "EmbeddingList": obj(
            ["object", "data", "model", "usage"],
            object={"const": "list"},
            data=array(embedding),
            model=STR,
            usage=usage,
        ),
    }


def paths(v1: OperationScope) -> dict:
    return {
        "/v1/embeddings": {
            "post": operation(
                "Create embeddings (an embedding model: kind `embedding` in /v1/models)",
                {
                    "200": json_response("The vectors, in input order", ref("EmbeddingList")),
                    **errors(400, 401, 403, 404, 413, 429, 500, 503, 504),
                },
                body=ref("EmbeddingRequest"),
                **v1,
            )
        }
    }

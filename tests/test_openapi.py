"""The OpenAPI document against the live server: schemathesis generates requests from
/openapi.json (valid ones and invalid ones), sends them over real HTTP to the session's
API and tiny-text worker, and holds every answer to the document: no 5xx, only documented
status codes and media types, bodies and headers that match their schemas (SSE events
included).

The run is bounded: a few dozen examples per operation, and generated chat requests are
narrowed to the served model (or one that does not exist) and a few tokens, so the tiny
worker answers each in a moment. The admin load and unload operations are left out: they
start and stop worker processes, which other tests share.
"""

from __future__ import annotations

import requests
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from api.openapi import build
from contract.settings import Settings

REQUEST_LINE = 4094
"""gunicorn's limit_request_line (its default): longer request lines never reach the app."""
EXAMPLES = 30
"""Generated examples per operation (the coverage phase adds its boundary cases)."""
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]


def narrowed(document: dict) -> dict:
    """The document with the chat request narrowed for a bounded run: the served model or a
    missing one, at most 8 tokens, a few messages. Answers are still checked in full."""
    request = document["components"]["schemas"]["ChatCompletionRequest"]["properties"]
    request["model"] = {"enum": ["tiny-text", "no-such-model"]}
    for name in ("max_tokens", "max_completion_tokens"):
        request[name] = {"anyOf": [{"type": "integer", "minimum": 1, "maximum": 8}, {"type": "null"}]}
    request["messages"]["maxItems"] = 4
    for name in ("AnthropicMessagesRequest", "AnthropicCountTokensRequest"):
        messages = document["components"]["schemas"][name]["properties"]
        messages["model"] = {"enum": ["tiny-text", "no-such-model"]}
        messages["messages"]["maxItems"] = 4
    document["components"]["schemas"]["AnthropicMessagesRequest"]["properties"]["max_tokens"] = {
        "type": "integer", "minimum": 1, "maximum": 8}  # fmt: skip
    for name in ("DocumentRequest", "DocumentUpload"):  # the text model (400) or none (404): no pages run
        document["components"]["schemas"][name]["properties"]["model"] = {"enum": ["tiny-text", "no-such-model"]}
    return document


def document() -> dict:
    """The document the session's API serves: built from the same settings (its environment
    is this process's, plus settings the document does not depend on); a test below checks
    the served one is equal. Built here, at import, because schemathesis's lazy loading from
    a fixture does not work with this pytest (it sets `Node._nodeid`, which pytest 9 dropped)."""
    return build(Settings())


schema = schemathesis.openapi.from_dict(narrowed(document())).exclude(path_regex=r"^/admin/(load|unload)$")
schema.config.update(request_timeout=60)
schema.config.generation.update(modes=["positive", "negative"], max_examples=EXAMPLES, database="none")


def test_the_served_document_is_the_one_tested(api_url):
    assert requests.get(api_url + "/openapi.json", timeout=10).json() == document()


def test_the_document_describes_every_public_endpoint():
    paths = document()["paths"]
    assert set(paths) >= {
        "/v1/chat/completions",
        "/v1/chat/completions/{completion_id}",
        "/v1/models",
        "/v1/models/{model_id}",
        "/health",
        "/openapi.json",
        "/admin/health",
        "/admin/status",
        "/admin/load",
        "/admin/unload",
        "/admin/commands/{command_id}",
        "/metrics",
        "/v1/messages",
        "/v1/messages/count_tokens",
        "/v1/documents",
        "/v1/documents/{doc_id}",
        "/v1/documents/{doc_id}/result",
        "/v1/files",
        "/v1/files/{file_id}",
        "/v1/files/{file_id}/content",
        "/v1/batches",
        "/v1/batches/{batch_id}",
        "/v1/batches/{batch_id}/cancel",
        "/v1/responses",
        "/v1/completions",
        "/v1/chat/completions/{completion_id}/cancel",
        "/v1/responses/{response_id}",
        "/v1/responses/{response_id}/cancel",
        "/v1/responses/{response_id}/input_items",
        "/v1/embeddings",
    }
    chat = paths["/v1/chat/completions"]["post"]["responses"]["200"]["content"]
    assert set(chat) == {"application/json", "text/event-stream"}


@schema.parametrize()
@settings(deadline=None, suppress_health_check=list(HealthCheck), max_examples=EXAMPLES, database=None)
def test_every_answer_matches_the_document(case, api_url, text_worker):
    kwargs = case.as_transport_kwargs(base_url=api_url)
    url = requests.Request(kwargs["method"], kwargs["url"], params=kwargs.get("params")).prepare().url or ""
    if len(kwargs["method"]) + len(url) > REQUEST_LINE - 20:
        # gunicorn answers such a request itself (414, its HTML page) before the app sees it:
        # a limit of the server in front of the API (docs/API.md), not an answer of the API.
        return
    case.call_and_validate(base_url=api_url, checks=CHECKS)

"""API keys on /v1/* over real HTTP: the official client with a good key, a wrong one and
none; keys from API_KEYS and from a file that is re-read; the admin token and API keys never
standing in for each other; and /v1 refused without keys off loopback."""

from __future__ import annotations

import os
import time

import openai
import pytest
import requests
from pydantic import ValidationError

import api
from contract.settings import Settings

from .support import HI, client_for

KEY = "sk-test-env-key-0123456789"
FILE_KEY = "sk-test-file-key-abcdef"
ADMIN = "admin-token-for-key-tests"


@pytest.fixture(scope="module")
def keyed(stack, tmp_path_factory):
    """An API with a key in API_KEYS, another in API_KEYS_FILE, and an admin token."""
    key_file = tmp_path_factory.mktemp("keys") / "api-keys.txt"
    key_file.write_text(f"# keys for the tests\n\n{FILE_KEY}   # a comment after a key\n")
    proc, url = stack.start_api(API_KEYS=f"{KEY}, sk-unused-second-key", API_KEYS_FILE=key_file, ADMIN_TOKEN=ADMIN)
    yield url, key_file, proc
    proc.stop()


def get(url: str, path: str, token: str | None = None) -> requests.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return requests.get(url + path, headers=headers, timeout=30)


def test_the_official_client_works_with_either_key(keyed, text_worker):
    url, _, _ = keyed
    for key in (KEY, FILE_KEY):
        reply = client_for(url, api_key=key).chat.completions.create(
            model="tiny-text", messages=HI, max_tokens=2, temperature=0
        )
        assert reply.usage.completion_tokens == 2
        assert "tiny-text" in {m.id for m in client_for(url, api_key=key).models.list().data}


@pytest.mark.parametrize("wrong", ["sk-wrong", KEY[:-1], KEY + "x", ADMIN, "sk-unused-second"])
def test_a_wrong_key_is_an_authentication_error(keyed, text_worker, wrong):
    url, _, _ = keyed
    with pytest.raises(openai.AuthenticationError) as caught:
        client_for(url, api_key=wrong).chat.completions.create(model="tiny-text", messages=HI, max_tokens=2)
    assert caught.value.status_code == 401
    assert caught.value.body["code"] == "invalid_api_key"


@pytest.mark.parametrize(
    "method, path",
    [
        ("GET", "/v1/models"),
        ("GET", "/v1/models/tiny-text"),
        ("POST", "/v1/chat/completions"),
        ("GET", "/v1/no-such-route"),
    ],
)
def test_every_v1_path_needs_a_key(keyed, method, path):
    url, _, _ = keyed
    for headers, code in (
        ({}, "missing_api_key"),
        ({"Authorization": f"Basic {KEY}"}, "missing_api_key"),
        ({"Authorization": "Bearer nope"}, "invalid_api_key"),
    ):
        response = requests.request(method, url + path, headers=headers, json={}, timeout=30)
        assert response.status_code == 401, response.text
        assert response.json()["error"]["code"] == code
        assert response.headers["WWW-Authenticate"].startswith("Bearer")


def test_health_and_the_openapi_document_stay_open(keyed):
    url, _, _ = keyed
    assert get(url, "/health").status_code == 200
    spec = get(url, "/openapi.json").json()
    assert spec["paths"]["/v1/models"]["get"]["security"] == [{"apiKey": []}]


def test_keys_and_the_admin_token_never_stand_in_for_each_other(keyed, text_worker):
    url, _, _ = keyed
    for key in (KEY, FILE_KEY):
        refused = get(url, "/admin/status", token=key)
        assert refused.status_code == 403 and refused.json()["error"]["code"] == "invalid_admin_token"
    assert get(url, "/admin/status", token=ADMIN).status_code == 200
    assert get(url, "/v1/models", token=ADMIN).status_code == 401


def test_the_key_file_is_read_again_when_it_changes(keyed):
    url, key_file, _ = keyed
    original = key_file.read_text()
    try:
        key_file.write_text("sk-rotated-in\n")
        os.utime(key_file, ns=(time.time_ns(), time.time_ns() + 1_000_000))
        assert get(url, "/v1/models", token="sk-rotated-in").status_code == 200
        assert get(url, "/v1/models", token=FILE_KEY).status_code == 401
        assert get(url, "/v1/models", token=KEY).status_code == 200  # API_KEYS still hold
    finally:
        key_file.write_text(original)
    assert get(url, "/v1/models", token=FILE_KEY).status_code == 200


def test_no_key_or_token_reaches_the_log(keyed, text_worker):
    url, _, proc = keyed
    get(url, "/v1/models", token=KEY)
    get(url, "/v1/models", token="sk-a-wrong-one")
    get(url, "/admin/status", token=ADMIN)
    log = proc.log_path.read_text(errors="replace")
    assert "/v1/models" in log  # the access log is there ...
    for secret in (KEY, FILE_KEY, ADMIN, "sk-a-wrong-one"):
        assert secret not in log  # ... without the credentials


def test_without_keys_v1_is_refused_off_loopback(stack):
    proc, url = stack.start_api(HOST="0.0.0.0")
    try:
        refused = get(url, "/v1/models")
        assert refused.status_code == 403
        error = refused.json()["error"]
        assert error["code"] == "api_keys_required" and "API_KEYS" in error["message"]
        assert get(url, "/health").status_code == 200
        assert "NO API KEYS" in proc.log_path.read_text(errors="replace")
    finally:
        proc.stop()


def test_without_keys_v1_is_open_on_loopback(api_url, text_worker):
    assert get(api_url, "/v1/models").status_code == 200


def test_misconfigurations_refuse_to_start(redis_server, tmp_path):
    with pytest.raises(ValidationError) as caught:
        Settings(api_keys="one,same", admin_token="same")
    assert "same" not in str(caught.value)  # the error names the rule, never the secret
    with pytest.raises(RuntimeError, match="API_KEYS_FILE cannot be read"):
        api.create_app(Settings(redis_url=redis_server.url, api_keys_file=str(tmp_path / "missing")))
    # A key file line holding the admin token is skipped, never accepted.
    key_file = tmp_path / "keys"
    key_file.write_text("fine-key\nsame\n")
    app = api.create_app(Settings(redis_url=redis_server.url, api_keys_file=str(key_file), admin_token="same"))
    client = app.test_client()
    assert client.get("/v1/models", headers={"Authorization": "Bearer same"}).status_code == 401
    assert client.get("/v1/models", headers={"Authorization": "Bearer fine-key"}).status_code == 200

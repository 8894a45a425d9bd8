"""Browser-borne requests (Hardening II, case 4) against the live API: a foreign `Host` (DNS
rebinding), a foreign page's `Origin` on a state-changing request (CSRF), and CORS for the
origins an operator allows."""

from __future__ import annotations

import pytest
import requests

EVIL = "https://evil.example"
APP = "https://app.example"
CHAT = {"model": "tiny-text", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, "temperature": 0}


@pytest.fixture(scope="module")
def cors_api(stack):
    api, url = stack.start_api(CORS_ORIGINS=f"{APP},http://localhost:5173")
    yield url
    api.stop()


def test_a_foreign_host_is_refused_everywhere(api_url):
    for path in ("/health", "/v1/models", "/admin/status", "/openapi.json"):
        response = requests.get(api_url + path, headers={"Host": "rebound.evil.example"}, timeout=10)
        assert response.status_code == 400, path
        assert response.json()["error"]["code"] == "invalid_host"
    port = api_url.rsplit(":", 1)[1]
    for host in (f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}", "localhost"):
        assert requests.get(api_url + "/health", headers={"Host": host}, timeout=10).status_code == 200, host


def test_a_foreign_page_cannot_post_to_admin_or_chat(api_url, conn, keys, text_worker):
    before = conn.xlen(keys.commands("text")) if conn.exists(keys.commands("text")) else 0
    form = requests.post(api_url + "/admin/load", params={"model_path": "tiny-text"}, data={"x": "1"},
                         headers={"Origin": EVIL}, timeout=10)  # fmt: skip
    assert form.status_code == 403 and form.json()["error"]["code"] == "origin_not_allowed"
    after = conn.xlen(keys.commands("text")) if conn.exists(keys.commands("text")) else 0
    assert after == before  # no load command was sent
    chat = requests.post(api_url + "/v1/chat/completions", json=CHAT, headers={"Origin": EVIL}, timeout=30)
    assert chat.status_code == 403 and "Access-Control-Allow-Origin" not in chat.headers


def test_same_origin_and_non_browser_clients_pass(api_url, text_worker):
    same = requests.post(api_url + "/v1/chat/completions", json=CHAT, headers={"Origin": api_url}, timeout=30)
    assert same.status_code == 200
    assert requests.post(api_url + "/v1/chat/completions", json=CHAT, timeout=30).status_code == 200
    # Reading is not state-changing: a GET with a foreign Origin is answered, without CORS headers,
    # so the browser does not hand the answer to the foreign page.
    models = requests.get(api_url + "/v1/models", headers={"Origin": EVIL}, timeout=10)
    assert models.status_code == 200 and "Access-Control-Allow-Origin" not in models.headers


def test_cors_for_allowed_origins(cors_api, text_worker):
    preflight = requests.options(cors_api + "/v1/chat/completions", timeout=10, headers={
        "Origin": APP, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type"})  # fmt: skip
    assert preflight.status_code == 204
    assert "POST" in preflight.headers["Access-Control-Allow-Methods"]
    assert "Authorization" in preflight.headers["Access-Control-Allow-Headers"]
    chat = requests.post(cors_api + "/v1/chat/completions", json=CHAT, headers={"Origin": APP}, timeout=30)
    assert chat.status_code == 200 and chat.headers["Access-Control-Allow-Origin"] == APP
    assert "Origin" in chat.headers["Vary"] and "X-Request-Id" in chat.headers["Access-Control-Expose-Headers"]
    refused = requests.options(cors_api + "/v1/chat/completions", timeout=10,
                               headers={"Origin": EVIL, "Access-Control-Request-Method": "POST"})  # fmt: skip
    assert refused.status_code == 403 and "Access-Control-Allow-Origin" not in refused.headers
    evil = requests.post(cors_api + "/v1/chat/completions", json=CHAT, headers={"Origin": EVIL}, timeout=30)
    assert evil.status_code == 403

"""The admin API over real HTTP: the token, model_path checks, health and status, load and
unload through a real manager process, and loading on demand from a chat request."""

from __future__ import annotations

import sys

import pytest
import requests

from contract.registry import live_managers

from .support import SLOW, alias, say_hi, wait_until

TOKEN = "s3cret-admin-token"


@pytest.fixture(scope="module")
def admin_api(stack):
    """An API with an admin token (the session API has none, on loopback)."""
    api, url = stack.start_api(ADMIN_TOKEN=TOKEN)
    yield url
    api.stop()


def admin(url, method, path, token=TOKEN, **params):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return requests.request(method, url + path, params=params, headers=headers, timeout=120)


@pytest.mark.parametrize(
    "method, path, allowed",
    [
        ("GET", "/admin/status", 200),
        ("GET", "/admin/health", 200),
        ("GET", "/admin/commands/nope", 404),
        ("POST", "/admin/load", 400),
        ("POST", "/admin/unload", 400),
    ],
)  # 400: no model_path given
def test_the_token_is_required(admin_api, text_worker, method, path, allowed):
    missing = admin(admin_api, method, path, token=None)
    assert missing.status_code == 401 and missing.json()["error"]["code"] == "missing_admin_token"
    wrong = admin(admin_api, method, path, token="nope")
    assert wrong.status_code == 403 and wrong.json()["error"]["code"] == "invalid_admin_token"
    assert admin(admin_api, method, path).status_code == allowed


def test_without_a_token_admin_is_refused_off_loopback(stack):
    api, url = stack.start_api(HOST="0.0.0.0")
    try:
        response = admin(url, "GET", "/admin/status", token=None)
        assert response.status_code == 403 and response.json()["error"]["code"] == "admin_disabled"
    finally:
        api.stop()


def test_without_a_token_admin_is_open_on_loopback(api_url, text_worker):
    assert admin(api_url, "GET", "/admin/status", token=None).status_code == 200


@pytest.mark.parametrize(
    "bad",
    [
        "../x",
        "/etc/passwd",
        "https://example.com/model",
        "a;rm -rf /",
        "$(reboot)",
        "name|cat",
        "no-such-model",
        "x" * 300,
        "",
    ],
)
@pytest.mark.parametrize("path", ["/admin/load", "/admin/unload"])
def test_bad_model_paths_are_400_with_a_clear_message(admin_api, path, bad):
    response = admin(admin_api, "POST", path, model_path=bad)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == "model_path" and error["message"]
    assert "Traceback" not in error["message"]


def test_status_shows_workers_queues_and_rates(admin_api, client):
    say_hi(admin_api, "tiny-text", max_tokens=3)
    before = admin(admin_api, "GET", "/admin/status").json()["redis"]
    say_hi(admin_api, "tiny-text", max_tokens=3, store=True)
    body = admin(admin_api, "GET", "/admin/status").json()
    memory = body["redis"]  # what a kept answer costs in Redis (Hardening II, case 10)
    assert memory["used_mb"] > 0 and memory["answers_kept"] == before["answers_kept"] + 1
    assert 1000 < memory["bytes_per_answer"] < 64_000
    worker = next(w for w in body["workers"] if w["model"] == "tiny-text")
    for field in ("pid", "host", "kind", "state", "active_jobs", "capacity", "tokens_per_s", "jobs_per_min"):
        assert field in worker
    assert worker["kind"] == "text" and worker["capacity"] >= 1
    names = {q["name"] for q in body["queues"]}
    assert "text:tiny-text:interactive" in names
    assert {"tokens_per_s", "jobs_per_min", "queued", "running"} <= set(body["totals"])
    assert isinstance(body["recent_errors"], list)


def test_status_tells_the_truth_while_a_job_runs(admin_api, stack, models_dir):
    """Hardening II, case 2: workers once showed `idle`, `active_jobs: 0` and `totals.running: 0`
    while they ran jobs (admissions never reached the registry)."""
    model = alias(models_dir, "tiny-status", target=SLOW)
    worker = stack.start_worker(model)
    try:
        response = requests.post(admin_api + "/v1/chat/completions", json={
            "model": model, "messages": [{"role": "user", "content": "go on"}], "max_tokens": 1500,
            "temperature": 0, "stream": True}, stream=True, timeout=30)  # fmt: skip
        lines = response.iter_lines(decode_unicode=True)
        next(line for line in lines if '"content":"' in (line or ""))  # generating now

        def busy():
            body = admin(admin_api, "GET", "/admin/status").json()
            mine = [w for w in body["workers"] if w["model"] == model]
            return (
                mine and mine[0]["state"] == "busy" and mine[0]["active_jobs"] == 1 and body["totals"]["running"] >= 1
            )

        wait_until(busy, 5, "the status to show the running job")
        health = requests.get(admin_api + "/health", timeout=10).json()
        assert [w["state"] for w in health["workers"] if w["model"] == model] == ["busy"]
        response.close()  # the relay cancels the job
        wait_until(lambda: [w["state"] for w in admin(admin_api, "GET", "/admin/status").json()["workers"]
                            if w["model"] == model] == ["idle"], 10, "idle again")  # fmt: skip
    finally:
        worker.stop()


def test_health_shows_each_worker_with_its_memory(admin_api, text_worker):
    body = admin(admin_api, "GET", "/admin/health").json()
    worker = next(w for w in body["workers"] if w["model"] == "tiny-text")
    assert worker["rss_bytes"] > 0 and worker["last_heartbeat_s"] < 5
    assert body["redis"] is True and isinstance(body["managers"], list)


def test_load_without_a_manager_is_503(admin_api, models_dir):
    model = alias(models_dir, "tiny-nobody-loads")
    response = admin(admin_api, "POST", "/admin/load", model_path=model, wait=1)
    # Managers from other tests may be running: then the load succeeds instead.
    if response.status_code == 503:
        assert response.json()["error"]["code"] == "no_manager"


@pytest.fixture(scope="module")
def manager(stack, conn, keys, tmp_path_factory):
    proc = stack.spawn(
        "manager",
        [sys.executable, "-m", "worker_text.manager", "--name", "admin-test-manager"],
        MANAGER_LOGS_DIR=tmp_path_factory.mktemp("manager-logs"),
    )
    wait_until(
        lambda: any(m.name == "admin-test-manager" for m in live_managers(conn, keys)), 30, "the manager registered"
    )
    yield proc
    proc.stop()


def test_load_then_unload_through_a_manager(admin_api, models_dir, manager):
    model = alias(models_dir, "tiny-admin-load")
    loaded = admin(admin_api, "POST", "/admin/load", model_path=model, wait=90)
    assert loaded.status_code == 200, loaded.text
    assert loaded.json()["status"] == "loaded" and loaded.json()["kind"] == "text"
    (worker,) = loaded.json()["workers"]
    # Hardening II, case 3: `replicas` is a target and every spelling is the one model: loading
    # it again, however spelled, starts no second worker.
    for spelling in (model, f"./{model}/", f".//{model}", str(models_dir / model)):
        again = admin(admin_api, "POST", "/admin/load", model_path=spelling, wait=30)
        assert again.status_code == 200 and again.json()["model"] == model, again.text
        assert again.json()["workers"] == [worker]
    models = requests.get(admin_api + "/v1/models", timeout=10).json()["data"]
    assert model in {m["id"] for m in models}
    assert [m["workers"] for m in models if m["id"] == model] == [1]
    reply = say_hi(admin_api, f"./{model}/", max_tokens=2)
    assert reply.model == model and reply.usage.completion_tokens == 2
    assert say_hi(admin_api, model, max_tokens=3).usage.completion_tokens == 3
    unloaded = admin(admin_api, "POST", "/admin/unload", model_path=model, wait=60)
    assert unloaded.status_code == 200 and unloaded.json()["status"] == "unloaded"
    models = requests.get(admin_api + "/v1/models", timeout=10).json()["data"]
    assert model not in {m["id"] for m in models}
    again = admin(admin_api, "POST", "/admin/unload", model_path=model, wait=1)
    assert again.status_code == 404


def test_a_load_may_quantize_its_workers_kv_cache(admin_api, models_dir, manager):
    """Issue 19: KV_BITS per load — `kv_bits`/`kv_group_size` reach the workers of that load."""
    from worker_text.tiny import build

    model = "tiny-admin-kv8"
    if not (models_dir / model).exists():
        build(models_dir / model, hidden_size=128)  # heads of 32 values: a group of 32 fits
    bad = admin(admin_api, "POST", "/admin/load", model_path=model, kv_bits=3)
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "kv_bits"
    loaded = admin(admin_api, "POST", "/admin/load", model_path=model, kv_bits=8, kv_group_size=32, wait=90)
    assert loaded.status_code == 200, loaded.text

    def kv_bits():
        workers = admin(admin_api, "GET", "/admin/status").json()["workers"]
        return next(((w["memory"] or {}).get("kv_bits") for w in workers if w["model"] == model), None)

    assert wait_until(kv_bits, 10, "the worker's memory figures") == 8
    assert say_hi(admin_api, model, max_tokens=3).usage.completion_tokens == 3
    admin(admin_api, "POST", "/admin/unload", model_path=model, wait=60)


def test_a_chat_request_loads_its_model_on_demand(admin_api, models_dir, manager):
    model = alias(models_dir, "tiny-on-demand")
    reply = say_hi(admin_api, model, max_tokens=2)  # waits in the queue while the manager loads it
    assert reply.usage.completion_tokens == 2
    wait_until(
        lambda: model in {m["id"] for m in requests.get(admin_api + "/v1/models", timeout=10).json()["data"]},
        10,
        "the model listed",
    )
    admin(admin_api, "POST", "/admin/unload", model_path=model, wait=60)


def test_the_dashboard_asks_browsers_for_basic_credentials(admin_api, text_worker):
    challenge = requests.get(admin_api + "/rq/", timeout=10)
    assert challenge.status_code == 401 and challenge.headers["WWW-Authenticate"].startswith("Basic")
    assert requests.get(admin_api + "/rq/", auth=("admin", TOKEN), timeout=10).status_code == 200
    assert requests.get(admin_api + "/rq/", auth=("admin", "wrong"), timeout=10).status_code == 403

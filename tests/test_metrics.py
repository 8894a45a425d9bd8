"""/metrics and the /rq dashboard: the admin token over real HTTP, the metrics that chat
requests leave behind (read through prometheus_client's own parser), rq-dashboard against our
rq 3.0 queues, and recording that survives a dead Redis."""

from __future__ import annotations

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

import api
from api import metrics, telemetry
from contract.settings import Settings

from .support import HI, client_for, free_port

TOKEN = "s3cret"
MODEL = "tiny-text"
QUEUE = f"text:{MODEL}:interactive"
ADMIN_PATHS = ["/metrics", "/rq/", "/rq/0/data/queues.json", "/rq/0/data/workers.json"]


@pytest.fixture(scope="module")
def token_api(stack):
    """An API with an admin token (the session API has none and is open to loopback)."""
    proc, url = stack.start_api(ADMIN_TOKEN=TOKEN)
    yield url
    proc.stop()


def get(url: str, path: str, token: str | None = None) -> requests.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return requests.get(url + path, headers=headers, timeout=30)


def scrape(url: str, token: str | None = None) -> dict[tuple, float]:
    """Every sample of /metrics as {(name, sorted labels): value}."""
    response = get(url, "/metrics", token)
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }


def value(samples: dict, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def delta(before: dict, after: dict, name: str, **labels) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


# ---- the admin token ----------------------------------------------------------------------


@pytest.mark.parametrize("path", ADMIN_PATHS)
def test_admin_paths_need_the_token(token_api, path):
    missing = get(token_api, path)
    assert missing.status_code == 401 and missing.json()["error"]["code"] == "missing_admin_token"
    # The dashboard asks for Basic credentials (a browser can send those; the token is the password).
    challenge = missing.headers["WWW-Authenticate"]
    assert challenge.startswith("Basic realm=") if path.startswith("/rq") else challenge == "Bearer"
    wrong = get(token_api, path, token="nope")
    assert wrong.status_code == 403 and wrong.json()["error"]["code"] == "invalid_admin_token"
    assert get(token_api, path, token=TOKEN).status_code == 200


def test_rq_dashboard_actions_are_guarded_too(token_api):
    """rq-dashboard can delete and requeue: refused before it runs, whatever the method."""
    response = requests.post(token_api + "/rq/job/whatever/delete", timeout=30)
    assert response.status_code == 401
    assert requests.get(token_api + "/rq", timeout=30, allow_redirects=False).status_code == 401


@pytest.fixture(scope="module")
def test_app(redis_server):
    """A Flask test client app for checks that need no worker: off loopback, or Redis gone."""

    def build(**settings):
        return api.create_app(Settings(**{"redis_url": redis_server.url, "key_prefix": "unit:", **settings}))

    return build


@pytest.mark.parametrize("path", ADMIN_PATHS)
def test_without_a_token_admin_paths_are_refused_off_loopback(test_app, path):
    bound_anywhere = test_app(host="0.0.0.0").test_client()
    response = bound_anywhere.get(path)
    assert response.status_code == 403 and response.get_json()["error"]["code"] == "admin_disabled"
    remote = test_app().test_client().get(path, environ_base={"REMOTE_ADDR": "10.1.2.3"})
    assert remote.status_code == 403


def test_without_a_token_admin_paths_are_open_on_loopback(api_url):
    for path in ADMIN_PATHS:
        assert get(api_url, path).status_code == 200, path


# ---- metrics from real requests -----------------------------------------------------------


def chat(api_url: str, stream: bool) -> int:
    """One greedy completion; returns its completion tokens (usage, streamed or not). The
    non-streamed one is stored: rq keeps a finished job only then (mis_jobs counts kept jobs)."""
    client = client_for(api_url)
    if not stream:
        return client.chat.completions.create(
            model=MODEL, messages=HI, temperature=0, max_tokens=12, store=True
        ).usage.completion_tokens
    chunks = list(
        client.chat.completions.create(
            model=MODEL, messages=HI, temperature=0, max_tokens=9, stream=True, stream_options={"include_usage": True}
        )
    )
    return chunks[-1].usage.completion_tokens


def test_chat_requests_show_in_the_metrics(api_url, client):
    before = scrape(api_url)
    tokens = [chat(api_url, stream) for stream in (False, True, False, True)]
    assert all(tokens)
    requests.get(api_url + "/v1/models/no-such-model", timeout=30)
    requests.get(api_url + "/no/such/path", timeout=30)
    after = scrape(api_url)

    assert (
        delta(before, after, "mis_http_requests_total", endpoint="/v1/chat/completions", method="POST", status="200")
        == 4
    )
    assert (
        delta(
            before, after, "mis_http_requests_total", endpoint="/v1/models/<path:model_id>", method="GET", status="404"
        )
        == 1
    )
    assert delta(before, after, "mis_http_requests_total", endpoint="unmatched", method="GET", status="404") == 1
    assert delta(before, after, "mis_tokens_generated_total", model=MODEL) == sum(tokens)
    assert delta(before, after, "mis_time_to_first_token_seconds_count", model=MODEL) == 4
    assert delta(before, after, "mis_time_to_first_token_seconds_bucket", model=MODEL, le="+Inf") == 4
    assert delta(before, after, "mis_time_to_first_token_seconds_sum", model=MODEL) > 0
    gaps = delta(before, after, "mis_inter_token_seconds_count", model=MODEL)
    assert 0 < gaps <= sum(tokens) - len(tokens)
    assert value(after, "mis_queue_depth", model=MODEL, kind="text", priority="interactive") == 0
    assert value(after, "mis_jobs", queue=QUEUE, state="finished") >= 2  # the stored two
    assert value(after, "mis_jobs", queue=QUEUE, state="queued") == 0
    live = sum(value(after, "mis_live_workers", model=MODEL, kind="text", state=state) for state in ("idle", "busy"))
    assert live >= 1
    assert (("mis_live_workers", (("kind", "text"), ("model", MODEL), ("state", "error")))) in after


def test_histogram_buckets_are_cumulative(api_url, client):
    chat(api_url, stream=True)
    samples = scrape(api_url)
    for name in ("mis_time_to_first_token_seconds", "mis_inter_token_seconds"):
        buckets = sorted(
            (
                (float(dict(labels)["le"]), v)
                for (n, labels), v in samples.items()
                if n == f"{name}_bucket" and dict(labels)["model"] == MODEL
            )
        )
        counts = [v for _, v in buckets]
        assert counts == sorted(counts) and buckets[-1][0] == float("inf")
        assert counts[-1] == value(samples, f"{name}_count", model=MODEL)


def test_metrics_are_shared_by_api_processes(api_url, token_api, client):
    """Counters live in Redis, so another API process (here: another server) sees them."""
    chat(api_url, stream=False)
    mine = scrape(api_url)
    theirs = scrape(token_api, TOKEN)
    name = "mis_tokens_generated_total"
    assert value(mine, name, model=MODEL) == value(theirs, name, model=MODEL) > 0


# ---- rq-dashboard -------------------------------------------------------------------------


def test_rq_dashboard_renders_and_lists_our_queues_and_workers(token_api, client):
    chat(token_api, stream=False)
    page = get(token_api, "/rq/", TOKEN)
    assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
    assert "RQ" in page.text or "rq" in page.text
    queues = get(token_api, "/rq/0/data/queues.json", TOKEN).json()["queues"]
    ours = {q["name"]: q for q in queues}
    assert QUEUE in ours and ours[QUEUE]["finished_job_registry_count"] >= 1
    workers = get(token_api, "/rq/0/data/workers.json", TOKEN).json()["workers"]
    assert any(QUEUE in w["queues"] for w in workers)
    jobs = get(token_api, f"/rq/0/data/jobs/{QUEUE}/finished/8/asc/1.json", TOKEN)
    assert jobs.status_code == 200 and jobs.json()["jobs"]
    job_id = jobs.json()["jobs"][0]["id"]
    job = get(token_api, f"/rq/0/data/job/{job_id}.json", TOKEN)
    assert job.status_code == 200 and job.json()["id"] == job_id
    assert get(token_api, f"/rq/0/view/job/{job_id}", TOKEN).status_code == 200


# ---- failure-proof recording --------------------------------------------------------------


def test_a_dead_redis_never_breaks_recording(test_app, monkeypatch):
    monkeypatch.setattr(telemetry, "_paused_until", 0.0)
    dead = test_app(redis_url=f"redis://127.0.0.1:{free_port()}/0").test_client()
    response = dead.get("/no/such/path")  # the after_request hook fails to write
    assert response.status_code == 404 and response.get_json()["error"]["code"] == "unknown_url"
    assert telemetry._paused_until > 0  # and the process stops trying for a while
    ext = dead.application.extensions["mis"]
    timer = telemetry.GenerationTimer(ext.conn, ext.keys, MODEL, started=0.0)
    monkeypatch.setattr(telemetry, "_paused_until", 0.0)
    timer.observe(None)
    for _ in range(3):
        timer.observe(telemetry.Event(telemetry.EventType.DELTA, data={"text": "x"}))
    timer.finish({"completion_tokens": 3})


@pytest.mark.parametrize(
    "name, parsed",
    [
        ("text:tiny-text:interactive", ("tiny-text", "text", "interactive")),
        ("vision:org/name:batch", ("org/name", "vision", "batch")),
        ("text:a:b:batch", ("a:b", "text", "batch")),
        ("default", None),
        ("text::batch", None),
        ("audio:m:batch", None),
        ("text:m:urgent", None),
    ],
)
def test_queue_names_parse_into_labels(name, parsed):
    assert metrics.queue_labels(name) == parsed

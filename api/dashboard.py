"""rq-dashboard at `/rq`, behind the admin token.

rq-dashboard 0.9.0 is a Flask blueprint with no authentication of its own, and it can delete
and requeue jobs, so every request under `/rq` passes `require_admin` first. The check is an
app-level `before_request` filtered on the path, not a hook on rq-dashboard's blueprint: that
blueprint is module state shared by every app built in the process (tests build several),
and app-level hooks run before any blueprint's, so rq-dashboard never touches Redis for a
refused request. Flask 2.3 removed the hook rq-dashboard used to connect to Redis, so
`setup_rq_connection` is called here (FACTS.md).
"""

from __future__ import annotations

from flask import Flask, request

from contract.settings import Settings

from .auth import require_admin

URL_PREFIX = "/rq"


def init_dashboard(app: Flask, settings: Settings) -> None:
    import rq_dashboard  # imported here: it pulls in arrow, six and its templates

    app.config.setdefault("RQ_DASHBOARD_REDIS_URL", settings.redis_url)
    app.config.setdefault("RQ_DASHBOARD_POLL_INTERVAL", 2500)
    app.before_request(_guard)
    app.register_blueprint(rq_dashboard.blueprint, url_prefix=URL_PREFIX)
    rq_dashboard.web.setup_rq_connection(app)
    _hide_redis_url(rq_dashboard.web)


def _hide_redis_url(web) -> None:
    """rq-dashboard 0.9.0 (pinned) prints each instance's Redis URL (host, port, database;
    only the password masked) and the rq versions on every page. Its views read both from
    module globals at request time, so they are replaced with a label; connections still use
    the configured URL."""
    web.escape_format_instance_list = lambda urls: [f"redis #{i}" for i in range(len(urls))]
    web.rq_version = web.rq_dashboard_version = "(not shown)"


def _guard() -> None:
    """`require_admin` for every path under /rq (its pages, JSON, actions and static files)."""
    if request.path == URL_PREFIX or request.path.startswith(URL_PREFIX + "/"):
        require_admin()

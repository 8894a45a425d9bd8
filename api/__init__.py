"""The HTTP API: a Flask app factory. Never imports mlx or worker code: it talks to workers
only through Redis (queues, token streams, the worker registry)."""
from __future__ import annotations

import logging
from dataclasses import dataclass

import redis
from flask import Flask

from contract.connection import connect
from contract.keys import Keys
from contract.settings import Settings


@dataclass
class Extension:
    """Shared clients of one app, kept in `app.extensions["mis"]` so tests can build their own."""

    settings: Settings
    conn: redis.Redis
    keys: Keys


def create_app(settings: Settings | None = None) -> Flask:
    settings = settings or Settings()
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.json.sort_keys = False
    app.extensions["mis"] = Extension(settings=settings, conn=connect(settings),
                                      keys=Keys(settings.key_prefix))
    logging.getLogger("mis").setLevel(logging.INFO)

    from . import admin, apikeys, batches, documents, errors, files, health, openai, openapi, request_id

    errors.init_app(app)
    request_id.init_app(app)  # first: the hooks after it log and answer with the request's id
    apikeys.init_app(app, settings)
    app.register_blueprint(health.bp)
    app.register_blueprint(openai.bp)
    app.register_blueprint(documents.bp)
    app.register_blueprint(files.bp)
    app.register_blueprint(batches.bp)
    app.register_blueprint(admin.bp)
    app.register_blueprint(openapi.bp)
    # -- metrics and rq-dashboard (api/metrics.py, api/dashboard.py), both admin-only --
    from . import dashboard, metrics

    app.register_blueprint(metrics.bp)
    app.after_request(metrics.count_request)
    dashboard.init_dashboard(app, settings)
    # -- end metrics --
    return app

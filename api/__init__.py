"""The HTTP API: a Flask app factory. Never imports mlx or worker code: it talks to workers
only through Redis (queues, token streams, the worker registry)."""

from __future__ import annotations

import logging
from typing import cast

from flask import Flask
from flask.json.provider import DefaultJSONProvider

from contract.context import Context
from contract.settings import Settings


def create_app(settings: Settings | None = None) -> Flask:
    settings = settings or Settings()
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    cast(DefaultJSONProvider, app.json).sort_keys = False  # answers keep the order they are built in
    # The one Context (connection, keys, settings) every view and hook reads.
    app.extensions["mis"] = Context.connect(settings)
    logging.getLogger("mis").setLevel(logging.INFO)

    from . import (
        admin,
        apikeys,
        batches,
        bodies,
        chat,
        documents,
        embeddings,
        errors,
        files,
        health,
        legacy,
        messages,
        models,
        openapi,
        origins,
        playground,
        request_id,
        responses,
    )

    errors.init_app(app)
    request_id.init_app(app)  # first: the hooks after it log and answer with the request's id
    origins.init_app(app, settings)  # before any auth: a foreign page's request ends here
    bodies.init_app(app)  # bodies read whole, in time, before any view
    apikeys.init_app(app, settings)
    app.register_blueprint(health.bp)
    app.register_blueprint(models.bp)
    app.register_blueprint(chat.bp)
    app.register_blueprint(legacy.bp)
    app.register_blueprint(messages.bp)  # Anthropic's Messages API
    app.register_blueprint(responses.bp)
    app.register_blueprint(embeddings.bp)
    app.register_blueprint(documents.bp)
    app.register_blueprint(files.bp)
    app.register_blueprint(batches.bp)
    app.register_blueprint(admin.bp)
    app.register_blueprint(openapi.bp)
    playground.init_app(app)  # the page at /, and security headers on every answer
    # -- metrics and rq-dashboard (api/metrics.py, api/dashboard.py), both admin-only --
    from . import dashboard, metrics, telemetry

    app.register_blueprint(metrics.bp)
    app.after_request(telemetry.count_request)
    dashboard.init_dashboard(app, settings)
    # -- end metrics --
    return app

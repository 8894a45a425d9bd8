"""`GET /v1/models[/<id>]`: the models live workers serve now, with their kind and context."""

from __future__ import annotations

from flask import Blueprint, current_app, jsonify

from contract import registry

from .intake import context_length, model_not_found

bp = Blueprint("models", __name__, url_prefix="/v1")


@bp.get("/models")
def list_models():
    models = _serving_models()
    return jsonify(object="list", data=[_model_card(m, ws) for m, ws in sorted(models.items())])


@bp.get("/models/<path:model_id>")
def get_model(model_id: str):
    models = _serving_models()
    if model_id not in models:
        raise model_not_found(model_id, models)
    return jsonify(_model_card(model_id, models[model_id]))


def _serving_models() -> dict[str, list[registry.WorkerInfo]]:
    ctx = current_app.extensions["mis"]
    return registry.serving_models(registry.live_workers(ctx.conn, ctx.keys))


def _model_card(model_id: str, workers: list[registry.WorkerInfo]) -> dict:
    return {
        "id": model_id,
        "object": "model",
        "owned_by": "mlx-inference-server",
        "created": int(min(w.started_at for w in workers)),
        "kind": workers[0].kind,
        "workers": len(workers),
        "context_length": context_length(workers) or None,
    }

"""The playground: one page at `/` for trying the server in a browser (chat with streaming and
Stop, images for vision models, a JSON-schema box, documents, batches, admin), served from
static files shipped in the package (api/static/playground/): no CDN, no build step.

The page is a client like any other: it calls the same `/v1` and `/admin` endpoints with the
same auth (an API key or the admin token the user types, kept in sessionStorage), so it has
no routes of its own beyond its files. Its answers carry a Content-Security-Policy that
allows only this server's own scripts and styles (no inline script, no eval, no other host),
and model output is only ever inserted as text (api/static/playground/markdown.js).
"""

from __future__ import annotations

from pathlib import Path

from flask import Blueprint, Flask, Response, request, send_from_directory

STATIC = Path(__file__).parent / "static" / "playground"

CSP = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data: blob:",  # previews of attached images
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    ]
)

bp = Blueprint("playground", __name__, static_folder=str(STATIC), static_url_path="/playground")


@bp.get("/")
def index() -> Response:
    response = send_from_directory(STATIC, "index.html")
    response.headers["Cache-Control"] = "no-cache"  # a new release's page, not yesterday's
    return response


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)
    app.after_request(security_headers)


def security_headers(response: Response) -> Response:
    """On every answer: no MIME sniffing, no Referer leaving the page; on the page and its
    files: the Content-Security-Policy and no framing."""
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "no-referrer")
    if request.path == "/" or request.path.startswith("/playground/"):
        response.headers["Content-Security-Policy"] = CSP
        response.headers["X-Frame-Options"] = "DENY"
    return response

"""A command-line client for documents: submit a file, follow its pages, write the result.

    python -m api.client document report.pdf --model M [--prompt ...] [--pages 1-3] [--dpi 150]
        [--max-tokens 512] [--combine "Summarize"] [--combine-model M2] [--wait]
        [--format json|markdown] [--output result.md]
    python -m api.client status doc_...      python -m api.client result doc_... [--format markdown]
    python -m api.client cancel doc_...

Without `--wait`, `document` prints the new document (its `id`) and returns. With it, a
progress bar of pages done runs on stderr until the document ends, and the result goes to
`--output` (default: stdout). The server is `--url` (default $MIS_URL, else
http://127.0.0.1:11440); `--api-key` (default $MIS_API_KEY) is sent as a bearer token.
Needs only `requests`. Exit status: 0 completed, 1 failed or canceled, 2 a request refused.
"""

from __future__ import annotations

import argparse
import json
import mimetypes
import os
import sys
import time
from pathlib import Path

import requests

TERMINAL = ("completed", "failed", "canceled")
BAR_WIDTH = 30


class Client:
    def __init__(self, url: str, api_key: str | None):
        self.url = url.rstrip("/")
        self.session = requests.Session()
        if api_key:
            self.session.headers["Authorization"] = f"Bearer {api_key}"

    def call(self, method: str, path: str, **kwargs) -> requests.Response:
        response = self.session.request(method, self.url + path, timeout=kwargs.pop("timeout", 300), **kwargs)
        if response.status_code >= 400:
            try:
                message = response.json()["error"]["message"]
            except (ValueError, KeyError, TypeError):
                message = response.text[:500]
            raise SystemExit(f"error {response.status_code}: {message}") from None
        return response


def progress(done: int, total: int, status: str) -> str:
    filled = BAR_WIDTH * done // total if total else 0
    return f"\r[{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {done}/{total} pages  {status:<10}"


def wait(client: Client, doc_id: str, interval: float, out=sys.stderr) -> dict:
    while True:
        view = client.call("GET", f"/v1/documents/{doc_id}").json()
        out.write(progress(view["pages_done"], view["pages_total"], view["status"]))
        out.flush()
        if view["status"] in TERMINAL:
            out.write("\n")
            return view
        time.sleep(interval)


def write_result(client: Client, doc_id: str, fmt: str, output: str | None) -> None:
    response = client.call("GET", f"/v1/documents/{doc_id}/result", params={"format": fmt})
    text = response.text if fmt == "markdown" else json.dumps(response.json(), indent=2) + "\n"
    if output:
        Path(output).write_text(text)
    else:
        sys.stdout.write(text)


def submit(client: Client, args) -> dict:
    fields = {"model": args.model, "dpi": str(args.dpi), "max_tokens": str(args.max_tokens)}
    for name in ("prompt", "pages", "combine", "combine_model"):
        if getattr(args, name):
            fields[name] = getattr(args, name)
    handles = [open(path, "rb") for path in args.files]  # noqa: SIM115 -- closed in the finally below, after the upload
    try:
        uploads = [
            ("file", (Path(p).name, h, mimetypes.guess_type(p)[0] or "application/octet-stream"))
            for p, h in zip(args.files, handles, strict=True)
        ]
        return client.call("POST", "/v1/documents", data=fields, files=uploads).json()
    finally:
        for handle in handles:
            handle.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m api.client", description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default=os.environ.get("MIS_URL", "http://127.0.0.1:11440"))
    parser.add_argument("--api-key", default=os.environ.get("MIS_API_KEY"))
    commands = parser.add_subparsers(dest="command", required=True)
    doc = commands.add_parser("document", help="submit a PDF or page images")
    doc.add_argument("files", nargs="+", help="one PDF, or page images in order")
    doc.add_argument("--model", required=True, help="a vision model")
    doc.add_argument("--prompt")
    doc.add_argument("--pages", help='e.g. "1-3,7"')
    doc.add_argument("--dpi", type=int, default=150)
    doc.add_argument("--max-tokens", type=int, default=512, help="per page")
    doc.add_argument("--combine", help="a prompt that turns the pages' results into one answer")
    doc.add_argument("--combine-model", help="the model for --combine (default: the server's TEXT_MODEL)")
    doc.add_argument("--wait", action="store_true", help="show progress and write the result")
    for name in ("status", "result", "cancel"):
        sub = commands.add_parser(name, help=f"{name} of a document")
        sub.add_argument("doc_id")
    for sub in (doc, commands.choices["result"]):
        sub.add_argument("--format", choices=["json", "markdown"], default="json")
        sub.add_argument("--output", "-o", help="write the result here (default: stdout)")
    doc.add_argument("--interval", type=float, default=1.0, help="seconds between status polls")
    args = parser.parse_args(argv)
    client = Client(args.url, args.api_key)
    try:
        if args.command == "document":
            created = submit(client, args)
            if not args.wait:
                print(json.dumps(created, indent=2))
                return 0
            final = wait(client, created["id"], args.interval)
            write_result(client, created["id"], args.format, args.output)
            return 0 if final["status"] == "completed" else 1
        if args.command == "result":
            write_result(client, args.doc_id, args.format, args.output)
            return 0
        method = {"status": "GET", "cancel": "DELETE"}[args.command]
        print(json.dumps(client.call(method, f"/v1/documents/{args.doc_id}").json(), indent=2))
        return 0
    except SystemExit as refused:
        print(refused, file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

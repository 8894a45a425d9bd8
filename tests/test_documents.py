"""Documents end to end: a PDF (or page images) → the API → a render job and one page job
per page on the tiny vision worker's batch queue → the aggregating job → per-page results in
order; limits and corrupt input as 4xx; cancel; a worker killed mid-document; the API
restarted mid-document."""

from __future__ import annotations

import base64
import json
import signal
import subprocess
import sys
import time

import jsonschema
import pytest
import requests
from rq.job import Job

from work import documents

from .pdfs import encrypted_pdf, make_pdf
from .support import ROOT, VISION_PYTHON, alias, wait_until
from .test_vision import png

MODEL = "tiny-vision"
DOCS_MODEL = "tiny-vision-docs"
"""An alias with queues of its own: these tests kill and restart its worker."""


@pytest.fixture(scope="module")
def docs_worker(stack, models_dir):
    if not (models_dir / MODEL).exists():
        subprocess.run(
            [str(VISION_PYTHON), "-m", "worker_vision.tiny", str(models_dir / MODEL)], check=True, capture_output=True
        )
    alias(models_dir, DOCS_MODEL, MODEL)
    return stack.start_vision_worker(DOCS_MODEL)


def submit(api_url: str, data: bytes, *, filename="doc.pdf", mime="application/pdf", **fields) -> requests.Response:
    form = {"model": DOCS_MODEL, "prompt": "Read this page.", "max_tokens": "4", "dpi": "72", **fields}
    return requests.post(api_url + "/v1/documents", data=form, files=[("file", (filename, data, mime))], timeout=30)


def wait_done(api_url: str, doc_id: str, timeout: float = 90) -> dict:
    def ended():
        body = requests.get(f"{api_url}/v1/documents/{doc_id}", timeout=10).json()
        return body if body["status"] in ("completed", "failed", "canceled") else None

    return wait_until(ended, timeout, f"document {doc_id}", interval=0.3)


def test_a_five_page_pdf_completes_with_its_pages_in_order(api_url, docs_worker):
    answer = submit(api_url, make_pdf(5))
    assert answer.status_code == 202, answer.text
    body = answer.json()
    assert body["id"].startswith("doc_") and body["pages_total"] == 5
    assert body["status"] in ("queued", "rendering", "running")
    assert body["links"]["result"] == f"/v1/documents/{body['id']}/result"
    final = wait_done(api_url, body["id"])
    assert final["status"] == "completed" and final["pages_done"] == 5
    result = requests.get(f"{api_url}/v1/documents/{body['id']}/result", timeout=10).json()
    assert [p["page"] for p in result["pages"]] == [1, 2, 3, 4, 5]
    assert all(p["status"] == "completed" and p["usage"]["completion_tokens"] >= 1 for p in result["pages"])
    assert result["usage"]["completion_tokens"] == sum(p["usage"]["completion_tokens"] for p in result["pages"])
    markdown = requests.get(f"{api_url}/v1/documents/{body['id']}/result?format=markdown", timeout=10)
    assert markdown.headers["Content-Type"].startswith("text/markdown")
    assert [line for line in markdown.text.splitlines() if line.startswith("## ")] == [
        f"## Page {n}" for n in range(1, 6)
    ]


def test_a_page_range_and_images_in_json(api_url, docs_worker):
    pages = [base64.b64encode(png(color=c)).decode() for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    answer = requests.post(
        api_url + "/v1/documents",
        json={"model": DOCS_MODEL, "images": pages, "pages": "3,1-2", "max_tokens": 3},
        timeout=30,
    )
    assert answer.status_code == 202, answer.text
    final = wait_done(api_url, answer.json()["id"])
    assert final["status"] == "completed"
    assert [p["page"] for p in final["pages"]] == [3, 1, 2]


@pytest.mark.parametrize(
    ("data", "code"),
    [(make_pdf(3)[:400], "invalid_pdf"), (encrypted_pdf(), "encrypted_pdf"), (b"not a document", "invalid_image")],
)
def test_corrupt_or_encrypted_documents_are_400(api_url, docs_worker, data, code):
    answer = submit(api_url, data)
    assert answer.status_code == 400
    assert answer.json()["error"]["code"] == code


def test_limits(api_url, docs_worker, text_worker):
    too_big = submit(api_url, b"%PDF-1.4\n" + b"0" * 2_100_000)
    assert too_big.status_code == 413 and too_big.json()["error"]["code"] == "document_too_large"
    assert submit(api_url, make_pdf(2), pages="3").json()["error"]["param"] == "pages"
    too_long = submit(api_url, make_pdf(201))  # MAX_DOCUMENT_PAGES: 200
    assert too_long.status_code == 400 and too_long.json()["error"]["code"] == "too_many_pages"
    accepted = submit(api_url, make_pdf(201), pages="1-200")
    assert accepted.status_code == 202 and accepted.json()["pages_total"] == 200
    requests.delete(f"{api_url}/v1/documents/{accepted.json()['id']}", timeout=10)  # not 200 pages of work
    assert submit(api_url, make_pdf(1), dpi="10000").json()["error"]["param"] == "dpi"
    text_model = submit(api_url, make_pdf(1), model="tiny-text")
    assert text_model.status_code == 400 and text_model.json()["error"]["param"] == "model"
    assert requests.get(api_url + "/v1/documents/doc_nope", timeout=10).status_code == 404


def test_cancel_keeps_what_is_done_and_stops_the_rest(api_url, docs_worker):
    body = submit(api_url, make_pdf(5), max_tokens="200").json()
    cancelled = requests.delete(f"{api_url}/v1/documents/{body['id']}", timeout=10).json()
    assert cancelled["status"] == "canceled"
    assert all(p["status"] in ("completed", "failed", "canceled") for p in cancelled["pages"])
    time.sleep(1)
    assert requests.get(f"{api_url}/v1/documents/{body['id']}", timeout=10).json()["status"] == "canceled"
    result = requests.get(f"{api_url}/v1/documents/{body['id']}/result", timeout=10)
    assert result.status_code == 200 and len(result.json()["pages"]) == 5


def test_a_worker_killed_mid_document_has_its_pages_retried(api_url, stack, docs_worker, conn, ctx):
    body = submit(api_url, make_pdf(5), max_tokens="48").json()

    def running():
        view = requests.get(f"{api_url}/v1/documents/{body['id']}", timeout=10).json()
        return any(p["status"] == "running" for p in view["pages"])

    wait_until(running, 60, "a page running")
    docs_worker.stop(signal.SIGKILL)
    replacement = stack.start_vision_worker(DOCS_MODEL)
    try:
        final = wait_done(api_url, body["id"], timeout=120)
        assert final["status"] == "completed", final
        assert [p["status"] for p in final["pages"]] == ["completed"] * 5
        page_jobs = [Job.fetch(j, connection=conn) for j in documents.load(ctx, body["id"])["page_jobs"]]
        assert any(job.retries_left < documents.PAGE_RETRIES for job in page_jobs)  # really retried
    finally:
        docs_worker.popen = replacement.popen  # later tests use the live one


def test_status_and_results_survive_an_api_restart(stack, docs_worker):
    proc, url = stack.start_api()
    body = submit(url, make_pdf(3), max_tokens="16").json()
    proc.stop()
    proc, url = stack.start_api()
    try:
        assert requests.get(f"{url}/v1/documents/{body['id']}", timeout=10).json()["pages_total"] == 3
        final = wait_done(url, body["id"])
        assert final["status"] == "completed"
        assert len(requests.get(f"{url}/v1/documents/{body['id']}/result", timeout=10).json()["pages"]) == 3
    finally:
        proc.stop()


def test_combine_turns_the_pages_into_one_answer(api_url, docs_worker, text_worker):
    body = submit(
        api_url, make_pdf(2), combine="Summarize the document.", combine_model="tiny-text", combine_max_tokens="5"
    ).json()
    final = wait_done(api_url, body["id"])
    assert final["status"] == "completed"
    result = requests.get(f"{api_url}/v1/documents/{body['id']}/result", timeout=10).json()
    assert result["combined"]["status"] == "completed"
    assert 1 <= result["combined"]["usage"]["completion_tokens"] <= 5
    markdown = requests.get(f"{api_url}/v1/documents/{body['id']}/result?format=markdown", timeout=10).text
    assert markdown.startswith("## Combined\n")


def test_the_cli_submits_waits_and_writes_the_result(api_url, docs_worker, tmp_path):
    pdf = tmp_path / "two.pdf"
    pdf.write_bytes(make_pdf(2))
    out = tmp_path / "result.md"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "api.client",
            "--url",
            api_url,
            "document",
            str(pdf),
            "--model",
            DOCS_MODEL,
            "--max-tokens",
            "3",
            "--dpi",
            "72",
            "--wait",
            "--interval",
            "0.3",
            "--format",
            "markdown",
            "-o",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    assert "2/2 pages" in done.stderr and "completed" in done.stderr
    assert "## Page 1" in out.read_text() and "## Page 2" in out.read_text()
    refused = subprocess.run(
        [sys.executable, "-m", "api.client", "--url", api_url, "status", "doc_nope"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert refused.returncode == 2 and "error 404" in refused.stderr


def test_a_page_schema_makes_every_page_validated_json(api_url, docs_worker):
    """Issue 14: "extract these fields from each page" — every page's text follows the schema
    (a form field holding the response_format's JSON text)."""
    schema = {
        "type": "object",
        "properties": {"title": {"type": "string", "maxLength": 8}, "total": {"type": "integer", "minimum": 0,
                                                                               "maximum": 999}},
        "required": ["title", "total"],
        "additionalProperties": False,
    }  # fmt: skip
    fmt = {"type": "json_schema", "json_schema": {"name": "invoice", "schema": schema}}
    answer = submit(api_url, make_pdf(3), max_tokens="200", response_format=json.dumps(fmt))
    assert answer.status_code == 202, answer.text
    assert wait_done(api_url, answer.json()["id"])["status"] == "completed"
    result = requests.get(f"{api_url}/v1/documents/{answer.json()['id']}/result", timeout=10).json()
    for page in result["pages"]:
        jsonschema.validate(json.loads(page["text"]), schema)
    refused = submit(api_url, make_pdf(1), response_format='{"type": "json_schema", "json_schema": {"name": "x", '
                                                          '"schema": {"not": {}}}}')  # fmt: skip
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "invalid_response_format"


@pytest.mark.parametrize("spec", ["1-", "+1", "١", "1_0", "2-1", "1--2", "1,,2", " - "])
def test_pages_take_ascii_numbers_and_whole_ranges(spec):
    from api.documents import parse_pages
    from api.errors import APIError

    with pytest.raises(APIError) as refused:
        parse_pages(spec, 5, 200)
    assert refused.value.param == "pages"


def test_pages_are_parsed_in_linear_time_before_the_limit():
    """Hardening III, case 1: a PDF claiming 20,000 (or 1,000,000) pages with repeated whole
    ranges cost an API process seconds; now the limit is checked before a range is expanded."""
    from api.documents import parse_pages
    from api.errors import APIError

    assert parse_pages("3,1-2,2-4", 5, 200) == [3, 1, 2, 4]
    cases = [
        (20_000, ",".join(["1-20000"] * 4)),
        (1_000_000, "1-1000000,1-1000000"),
        (20_000, ",".join(["1-150"] * 200)),
    ]
    for total, spec in cases:
        started = time.perf_counter()
        try:
            pages = parse_pages(spec, total, 200)
            assert len(pages) <= 200
        except APIError as exc:
            assert exc.code == "too_many_pages"
        assert time.perf_counter() - started < 0.05


def test_a_document_is_a_pdf_or_images_not_both_and_page_images_are_images(api_url, docs_worker, stack):
    body = {"model": DOCS_MODEL, "document": "JVBERg==", "images": [base64.b64encode(png()).decode()]}
    both = requests.post(api_url + "/v1/documents", json=body, timeout=30)
    assert both.status_code == 400 and both.json()["error"]["param"] == "images"
    _, small_images = stack.start_api(MAX_IMAGE_BYTES=100_000)
    big = b"\x89PNG\r\n\x1a\n" + b"\0" * 150_000  # over MAX_IMAGE_BYTES, under MAX_DOCUMENT_BYTES
    refused = submit(small_images, big, filename="p.png", mime="image/png")
    assert refused.status_code == 413 and refused.json()["error"]["code"] == "image_too_large"


def test_a_document_that_failed_to_render_says_so_for_every_page():
    """Hardening III, case 4: a render failure left every page `queued` in status and result."""
    from work.documents import DocStatus, DocumentJob, page_results

    meta = DocumentJob(id="doc_x", model="m", prompt="p", max_tokens=1, page_numbers=[2, 5])
    error = {"code": "render_failed", "message": "the document could not be rendered: boom"}
    pages = page_results(None, {"status": DocStatus.FAILED, "meta": meta, "error": error})  # type: ignore[arg-type]
    assert [(p.page, p.status.value, p.error) for p in pages] == [(2, "failed", error), (5, "failed", error)]
    cancelled = page_results(None, {"status": DocStatus.CANCELED, "meta": meta})  # type: ignore[arg-type]
    assert {p.status.value for p in cancelled} == {"canceled"}


def test_unknown_models_are_refused_at_submission(api_url, docs_worker):
    """Hardening III, case 4: an unknown combine_model left the document running forever (its
    combine job waited for a load that had failed); `nope/x` was called a text model."""
    unknown_combine = submit(api_url, make_pdf(1), combine="Sum up.", combine_model="nope-combine")
    assert unknown_combine.status_code == 404 and unknown_combine.json()["error"]["param"] == "combine_model"
    unknown = submit(api_url, make_pdf(1), model="nope/x")
    assert unknown.status_code == 404 and "text model" not in unknown.json()["error"]["message"]


def test_a_render_bomb_is_stopped_by_its_clock_and_by_delete(api_url, stack, models_dir, conn):
    """Hardening III, case 2: a 3 KB page of nested form XObjects rendered for minutes, and
    DELETE said `canceled` while it went on. Now pdfium runs in a child process that the
    worker kills when a page passes RENDER_PAGE_TIMEOUT, or within a second of a DELETE."""
    from .pdfs import render_bomb

    model = alias(models_dir, "tiny-vision-bombs", MODEL)
    worker = stack.start_vision_worker(model, RENDER_PAGE_TIMEOUT=3)
    try:
        slow = submit(api_url, render_bomb(depth=7), model=model)  # ~5 s of pdfium: past 3 s
        assert slow.status_code == 202
        failed = wait_done(api_url, slow.json()["id"], timeout=30)
        assert failed["status"] == "failed" and "RENDER_PAGE_TIMEOUT" in failed["error"]["message"]
        assert [p["status"] for p in failed["pages"]] == ["failed"]  # not `queued` (case 4)
        endless = submit(api_url, render_bomb(depth=9), model=model).json()["id"]  # minutes of pdfium
        record = f"test:document:{endless}"

        def rendering():
            return requests.get(f"{api_url}/v1/documents/{endless}", timeout=10).json()["status"] == "rendering"

        wait_until(rendering, 30, "the render")
        render_job = json.loads(conn.hget(record, "render_job"))
        requests.delete(f"{api_url}/v1/documents/{endless}", timeout=10)
        deleted = time.monotonic()
        wait_until(lambda: Job.fetch(render_job, connection=conn).get_status() == "finished", 5, "the render's end")
        assert time.monotonic() - deleted < 1.5
    finally:
        worker.stop()

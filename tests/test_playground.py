"""The playground at `/` in a real headless Chromium (Debian's `chromium`, driven by Playwright
for Python): the page loads with no console errors under its Content-Security-Policy, streams a
chat answer from tiny-text, Stop cancels the job on the server, an image goes to tiny-vision, a
3-page PDF is read to 3/3 with its result shown, and an answer made of HTML (forced through a
JSON schema, no stubs) shows as text. A failing test leaves a screenshot in var/screenshots/.

`.ci/run` installs Chromium when it is missing; elsewhere `apt-get install chromium` (or set
CHROMIUM to a Chromium or Chrome binary).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import requests
from playwright.sync_api import expect

from contract.results import ResultStatus, read_result

from .pdfs import make_pdf
from .support import ROOT, SLOW, VISION_PYTHON, alias, wait_until
from .test_vision import png

CHROMIUM = os.environ.get("CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
# As root on a machine without network: no sandbox, and none of Chromium's background calls home.
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]  # fmt: skip
SHOTS = ROOT / "var" / "screenshots"
XSS = "<img src=x onerror=window.pwned=1><script>window.pwned=2</script>"


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.fail(f"no Chromium at {CHROMIUM}: `apt-get install chromium` (as .ci/run does) or set CHROMIUM")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def vision_model(stack, models_dir):
    if not (models_dir / "tiny-vision").exists():
        subprocess.run([str(VISION_PYTHON), "-m", "worker_vision.tiny", str(models_dir / "tiny-vision")], check=True)
    stack.start_vision_worker("tiny-vision")
    return "tiny-vision"


@pytest.fixture()
def page(browser, api_url, text_worker, request):
    """A fresh page on the playground; its console errors and uncaught exceptions are collected."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.errors = []
    page.on("console", lambda m: page.errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: page.errors.append(str(e)))
    page.on("dialog", lambda d: (page.errors.append(f"dialog: {d.message}"), d.dismiss()))
    page.goto(api_url + "/")
    # Waits use selectors: the page's CSP forbids the eval that string predicates would need.
    page.wait_for_selector("#model option", state="attached")
    yield page
    if getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed:
        SHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SHOTS / f"{request.node.name}.png"), full_page=True)
    context.close()


def pick(page, model: str) -> None:
    page.wait_for_selector(f"#model option[value='{model}']", state="attached", timeout=60_000)
    page.select_option("#model", model)


def send(page, text: str, max_tokens: int = 24) -> None:
    page.fill("#temperature", "0")  # greedy: a tiny model never ends early by chance
    page.fill("#max-tokens", str(max_tokens))
    page.fill("#prompt", text)
    page.click("#send")


def done(page, timeout: int) -> None:
    page.wait_for_selector(".message.assistant:last-child[data-state=done]", timeout=timeout)


def last_answer(page):
    return page.locator(".message.assistant").last


def test_the_page_loads_clean_with_its_security_headers(page, api_url):
    assert page.title().startswith("MLX Inference Server")
    options = page.eval_on_selector_all("#model option", "os => os.map(o => o.textContent)")
    assert "tiny-text (text)" in options
    assert page.locator("#model-kind").text_content() == "text"
    assert not page.locator("#attach-label").is_visible()  # images only for vision models
    headers = requests.get(api_url + "/", timeout=10).headers
    csp = headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert headers["X-Content-Type-Options"] == "nosniff" and headers["Referrer-Policy"] == "no-referrer"
    assert (
        requests.get(api_url + "/playground/app.js", timeout=10).headers["Content-Type"].startswith("text/javascript")
    )
    assert requests.get(api_url + "/playground/nope.js", timeout=10).status_code == 404
    page.click("nav button[data-tab=batches]")
    page.click("nav button[data-tab=admin]")
    page.wait_for_selector("#workers-table tbody tr")
    page.click("nav button[data-tab=chat]")
    assert page.errors == []


def test_a_streamed_answer_appears(page):
    pick(page, "tiny-text")
    seen = []
    page.expose_function("seen", lambda n: seen.append(n))
    page.evaluate("""new MutationObserver(() => {
        const a = [...document.querySelectorAll('.message.assistant')].pop();
        if (a && a.classList.contains('streaming')) window.seen(a.innerText.length);
    }).observe(document.getElementById('messages'), {subtree: true, childList: true, characterData: true})""")
    send(page, "Hello there", max_tokens=32)
    answer = last_answer(page)
    done(page, 60_000)
    assert answer.inner_text().strip()
    assert len({n for n in seen if n > 0}) > 1, seen  # it grew while streaming, not all at once
    assert re.search(r"done \(\w+\) · \d+ tokens", page.locator("#chat-status").text_content())
    assert page.errors == []


def test_stop_cancels_the_job(page, stack, models_dir, conn, keys):
    # A model slow enough (~100 tokens/s here) that the answer is still streaming when Stop is
    # clicked, decoded greedily (it never picks an end token by chance).
    model = alias(models_dir, "tiny-play-slow", target=SLOW)
    stack.start_worker(model)
    page.click("#refresh-models")
    pick(page, model)
    send(page, "Tell me a long story", max_tokens=1500)
    page.wait_for_selector(".message.assistant:last-child[data-completion-id]", timeout=60_000)
    completion_id = last_answer(page).get_attribute("data-completion-id")
    page.click("#stop")
    page.wait_for_selector(".message.assistant:last-child[data-state=stopped]")
    job_id = completion_id.removeprefix("chatcmpl-")
    wait_until(lambda: read_result(conn, keys, job_id).status == ResultStatus.CANCELED, 10, "the job to end canceled")
    assert "stopped" in page.locator("#chat-status").text_content()
    assert not page.locator("#send").is_disabled()


def test_an_image_goes_to_a_vision_model(page, vision_model, tmp_path):
    pick(page, vision_model)
    assert page.locator("#attach-label").is_visible()
    image = tmp_path / "red.png"
    image.write_bytes(png())
    page.set_input_files("#attach", str(image))
    page.wait_for_selector("#attach-preview:not([hidden])")
    send(page, "What colour is this?", max_tokens=8)
    done(page, 90_000)
    assert page.locator(".message.user img").count() == 1
    assert page.errors == []


def test_a_pdf_is_read_page_by_page(page, vision_model, tmp_path):
    pick(page, vision_model)
    pdf = tmp_path / "three.pdf"
    pdf.write_bytes(make_pdf(3))
    page.click("nav button[data-tab=documents]")
    page.set_input_files("#doc-file", str(pdf))
    page.fill("#doc-max-tokens", "8")
    page.click("#doc-form button[type=submit]")
    expect(page.locator("#doc-count")).to_have_text("3/3 pages", timeout=180_000)
    page.wait_for_selector("#doc-result:not([hidden])", timeout=30_000)
    assert page.locator("#doc-status").text_content() == "completed"
    assert "Page 3" in page.locator("#doc-markdown").inner_text()
    page.click("#doc-show-json")
    result = json.loads(page.locator("#doc-json").text_content())
    assert [p["page"] for p in result["pages"]] == [1, 2, 3]
    assert page.errors == []


def test_an_html_answer_renders_inert(page):
    """The model is made to answer with HTML (a JSON schema whose only value is it): the page
    shows the characters; no element is made from them and none of their script runs."""
    pick(page, "tiny-text")
    page.click("#schema-box summary")
    page.fill("#schema", json.dumps({"type": "string", "enum": [XSS]}))
    send(page, "Say it", max_tokens=200)
    done(page, 60_000)
    shown = last_answer(page).inner_text()
    assert XSS in shown, shown
    assert last_answer(page).locator("img, script").count() == 0
    assert page.evaluate("window.pwned") is None
    assert page.errors == []


def test_the_markdown_renderer_makes_no_element_from_model_text(page):
    """The renderer alone, on hostile input: formatting works, markup and unsafe links stay text."""
    html = page.evaluate("""async () => {
        const { render } = await import('/playground/markdown.js');
        const div = document.createElement('div');
        div.append(render([
            '# Title', '**bold** and *it* and `<b>code</b>`',
            '[ok](https://example.com) [bad](javascript:alert(1)) [data](data:text/html,<script>x</script>)',
            '<iframe src=x></iframe> <svg onload=alert(1)>', '```html', '<script>alert(1)</script>', '```',
            '- one', '- two', '> quoted <i>x</i>'].join('\\n')));
        return div.innerHTML;
    }""")
    for tag in ("<h3>", "<strong>bold</strong>", "<em>it</em>", "<code>&lt;b&gt;code&lt;/b&gt;</code>",
                '<a href="https://example.com/"', "<li>two</li>", "<blockquote>"):  # fmt: skip
        assert tag in html, (tag, html)
    for bad in ("<iframe", "<svg", "<script", 'href="javascript', 'href="data', "<i>"):
        assert bad not in html, (bad, html)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert page.errors == []

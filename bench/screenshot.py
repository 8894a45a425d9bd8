"""The README's screenshot, taken from a running server: the playground in headless Chromium,
a question sent to a model, the streamed answer left on screen.

    make run &                                   # or any server
    .venv/bin/python bench/screenshot.py [--url http://127.0.0.1:11440] [--model SmolLM2-135M-Instruct]
                                         [--out docs/img/playground.png]

It drives Debian's chromium (CHROMIUM overrides the path) with Playwright, as the browser tests
do, waits for the model to be listed, sends the prompt and waits for the answer to finish
streaming; it fails if no text arrived, so a screenshot never shows an empty answer.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", default=f"http://127.0.0.1:{os.environ.get('API_PORT', '11440')}")
    parser.add_argument("--model", default="SmolLM2-135M-Instruct")
    parser.add_argument("--prompt", default="What is the capital of France? Answer in two sentences.")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--timeout", type=float, default=300, help="seconds to wait for the model and its answer")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "img" / "playground.png")
    args = parser.parse_args()
    chromium = os.environ.get("CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"

    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=ARGS, headless=True)
        page = browser.new_page(viewport={"width": 1200, "height": 720}, device_scale_factor=1)
        page.goto(args.url + "/")
        timeout_ms = int(args.timeout * 1000)
        page.wait_for_selector(f"#model option[value='{args.model}']", state="attached", timeout=timeout_ms)
        page.select_option("#model", args.model)
        page.fill("#system", "You are a concise assistant.")
        page.fill("#temperature", "0")
        page.fill("#max-tokens", str(args.max_tokens))
        page.fill("#prompt", args.prompt)
        start = time.perf_counter()
        page.click("#send")
        page.wait_for_selector(".message.assistant:last-child[data-state]", timeout=timeout_ms)
        state = page.get_attribute(".message.assistant:last-child", "data-state")
        answer = page.inner_text(".message.assistant:last-child").strip()
        if state != "done" or not answer:
            print(f"no answer to show (state {state}): {page.inner_text('#error')}", file=sys.stderr)
            return 1
        args.out.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(args.out))
        status = page.inner_text("#chat-status")
        print(f"{args.out}: {args.model} answered in {time.perf_counter() - start:.1f} s ({status}): {answer[:80]!r}")
        browser.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

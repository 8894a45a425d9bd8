"""`make run` as a user runs it: everything starts, answers, and SIGTERM stops every process
it started, leaving the port free."""

from __future__ import annotations

import os
import signal
import socket
import subprocess

import openai
import requests

from .support import ROOT, free_port, wait_until
from .test_vision import data_uri, image_message, png


def session_pids(sid: int) -> list[int]:
    out = subprocess.run(["ps", "-e", "-o", "pid=,sid="], capture_output=True, text=True).stdout
    return [int(pid) for pid, s in (line.split() for line in out.splitlines()) if int(s) == sid]


def port_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def announced(log_text: str, models: dict[str, str]) -> str | None:
    """managers.announce's ready line, once every model is named as serving in it or has had
    a `ready:` line of its own; None before."""
    line = next((line for line in log_text.splitlines() if "MLX Inference Server ready — " in line), None)
    serving = line.partition("serving: ")[2].partition(" · ")[0] if line else ""
    done = all(f"{m} ({k})" in serving or f"ready: {m} ({k})" in log_text for m, k in models.items())
    return line if done else None


def test_make_run_serves_and_sigterm_stops_everything(models_dir, tmp_path):
    port, redis_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MAKE", "MFLAGS", "REDIS_URL"))}
    env.update(MODELS_DIR=str(models_dir), REDIS_DATA_DIR=str(tmp_path / "redis"), KEY_PREFIX="mr:")
    log = open(tmp_path / "make-run.log", "wb")  # noqa: SIM115 -- make writes to it for the whole test
    make = subprocess.Popen(
        [
            "make",
            "--no-print-directory",
            "run",
            "TEXT_MODEL=tiny-text",
            "VISION_MODEL=tiny-vision",
            "EMBED_MODEL=tiny-embed",
            f"PORT={port}",
            f"REDIS_PORT={redis_port}",
        ],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0, timeout=30)

        def served():
            try:
                return {"tiny-text", "tiny-vision", "tiny-embed"} <= {m.id for m in client.models.list().data}
            except openai.APIError:
                return False

        wait_until(served, 180, "make run to serve tiny-text, tiny-vision and tiny-embed", interval=0.5)
        kinds = {m.id: m.model_extra.get("kind") for m in client.models.list().data}
        assert kinds["tiny-embed"] == "embedding"
        vectors = client.embeddings.create(model="tiny-embed", input=["hello", "world"])
        assert [d.index for d in vectors.data] == [0, 1]
        reply = client.chat.completions.create(
            model="tiny-text", max_tokens=3, temperature=0, messages=[{"role": "user", "content": "hi"}]
        )
        assert reply.usage.completion_tokens == 3
        seen = client.chat.completions.create(
            model="tiny-vision", max_tokens=3, messages=image_message(data_uri(png()))
        )
        assert seen.usage.prompt_tokens > 10
        text = (tmp_path / "make-run.log").read_text()
        assert f"http://127.0.0.1:{port}/v1" in text and "curl" in text
        models = {"tiny-text": "text", "tiny-vision": "vision", "tiny-embed": "embedding"}
        ready = wait_until(
            lambda: announced((tmp_path / "make-run.log").read_text(), models), 15, "make run's ready lines"
        )
        assert f"API http://127.0.0.1:{port}/v1" in ready
        # The playground is named only where the API serves one at `/`.
        playground = requests.get(f"http://127.0.0.1:{port}/", timeout=5).status_code == 200
        assert (f"playground http://127.0.0.1:{port}/ " in ready) == playground
        assert len(session_pids(make.pid)) >= 5  # make, honcho, redis, api, workers...
        make.send_signal(signal.SIGTERM)
        make.wait(30)
        wait_until(lambda: not session_pids(make.pid), 30, "every process started by make run to exit")
        assert port_free(port) and port_free(redis_port)
    finally:
        for pid in session_pids(make.pid):
            os.kill(pid, signal.SIGKILL)
        log.close()

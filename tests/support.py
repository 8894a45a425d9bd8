"""Real processes for tests: a Redis server, gunicorn running the API, model workers."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import openai
import redis
import requests

from contract.keys import Keys
from contract.redis_server import server_argv
from contract.registry import WorkerState, live_workers

ROOT = Path(__file__).resolve().parent.parent
VISION_PYTHON = Path(os.environ.get("VISION_PYTHON") or ROOT / ".venv-vision" / "bin" / "python")
"""mlx-vlm's interpreter; a GPU machine with one Python for everything sets VISION_PYTHON."""
"""The vision worker's interpreter: `make test` builds .venv-vision before the tests run."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate, timeout: float, what: str, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


@dataclass
class Proc:
    """A child process with its output in a log file (shown when a wait fails)."""

    argv: list[str]
    env: dict
    log_path: Path
    popen: subprocess.Popen | None = None

    def start(self) -> Proc:
        self.log_file = open(self.log_path, "ab")  # noqa: SIM115 -- the child writes to it until stop() closes it
        self.popen = subprocess.Popen(
            self.argv, env=self.env, cwd=ROOT, stdout=self.log_file, stderr=subprocess.STDOUT, start_new_session=True
        )
        return self

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def send(self, sig: int) -> None:
        if self.alive():
            os.kill(self.popen.pid, sig)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> int | None:
        if self.popen is None:
            return None
        if self.alive():
            os.kill(self.popen.pid, sig)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(5)
        self.log_file.close()
        return self.popen.returncode

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]


@dataclass
class RedisServer:
    port: int
    data_dir: Path
    proc: Proc | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.proc = Proc(
            server_argv(self.port, self.data_dir, appendonly=False), dict(os.environ), self.data_dir / "redis.log"
        ).start()
        client = redis.Redis(port=self.port)
        wait_until(lambda: _pings(client), 10, "redis")
        return self

    def stop(self) -> None:
        if self.proc:
            self.proc.stop()


def _pings(client: redis.Redis) -> bool:
    try:
        return client.ping()
    except redis.exceptions.ConnectionError:
        return False


@dataclass
class Stack:
    """Environment shared by the API and workers of one test session."""

    env: dict
    logs: Path
    procs: list[Proc] = field(default_factory=list)

    def spawn(self, name: str, argv: list[str], **env) -> Proc:
        proc = Proc(
            argv, {**self.env, **{k: str(v) for k, v in env.items()}}, self.logs / f"{name}-{len(self.procs)}.log"
        ).start()
        self.procs.append(proc)
        return proc

    def start_api(self, **env) -> tuple[Proc, str]:
        """Another API process on a free port; `env` overrides settings (API_KEYS=..., HOST=...)."""
        port = free_port()
        proc = self.spawn(
            "api",
            [sys.executable, "-m", "gunicorn", "-c", "api/gunicorn_conf.py", "api:create_app()"],
            **{"API_PORT": port, "WEB_CONCURRENCY": 1, **env},
        )
        url = f"http://127.0.0.1:{port}"
        try:
            wait_until(lambda: _answers(url), 30, "the API")
        except TimeoutError:
            raise TimeoutError(proc.log()) from None
        return proc, url

    def start_worker(self, model: str, wait: bool = True, **env) -> Proc:
        proc = self.spawn(
            f"worker-{model.replace('/', '_')}", [sys.executable, "-m", "worker_text", "--model", model], **env
        )
        if wait:
            self.wait_for_worker(proc, model)
        return proc

    def start_vision_worker(self, model: str, wait: bool = True, **env) -> Proc:
        """A vision worker, run by the vision venv's interpreter (mlx-vlm lives only there)."""
        proc = self.spawn(
            f"vision-{model.replace('/', '_')}", [str(VISION_PYTHON), "-m", "worker_vision", "--model", model], **env
        )
        if wait:
            self.wait_for_worker(proc, model)
        return proc

    def start_embedding_worker(self, model: str, wait: bool = True, **env) -> Proc:
        proc = self.spawn(
            f"embedding-{model.replace('/', '_')}", [sys.executable, "-m", "worker_embedding", "--model", model], **env
        )
        if wait:
            self.wait_for_worker(proc, model)
        return proc

    def wait_for_worker(self, proc: Proc, model: str, state=WorkerState.IDLE, timeout: float = 120):
        conn = redis.Redis.from_url(self.env["REDIS_URL"])
        keys = Keys(self.env["KEY_PREFIX"])

        def ready():
            if not proc.alive():
                raise RuntimeError(f"worker exited:\n{proc.log()}")
            return [w for w in live_workers(conn, keys) if w.pid == proc.pid and w.state == state]

        try:
            return wait_until(ready, timeout, f"worker for {model} in state {state}")[0]
        except TimeoutError:
            raise TimeoutError(proc.log()) from None

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()


def _answers(url: str) -> bool:
    try:
        return requests.get(url + "/health", timeout=1).status_code in (200, 503)
    except requests.RequestException:
        return False


SLOW = "tiny-slow"
"""A tiny model about ten times slower than tiny-text (built by conftest's models_dir)."""


def alias(models_dir: Path, name: str, target: str = "tiny-text") -> str:
    """Another model id for a tiny model, so a test's worker gets queues of its own."""
    link = models_dir / name
    if not link.exists():
        link.symlink_to(models_dir / target)
    return name


def client_for(api_url: str, api_key: str = "unused") -> openai.OpenAI:
    """The official client; it sends `Authorization: Bearer <api_key>` (APIs started with
    API_KEYS check it, the session API on loopback ignores it)."""
    return openai.OpenAI(base_url=api_url + "/v1", api_key=api_key, max_retries=0, timeout=60)


HI = [{"role": "user", "content": "hi"}]


def say_hi(api_url: str, model: str, **kw):
    """Greedy by default: exact token counts must not depend on sampling the end token."""
    return client_for(api_url).chat.completions.create(model=model, messages=HI, **{"temperature": 0, **kw})


def batch_generate(model, prompts: list[list[int]], steps: int) -> tuple[list[list[int]], list]:
    """Each prompt's first `steps` tokens and their log-probabilities (one stacked array per
    prompt), all prompts in one mlx-lm BatchGenerator, as the text engine runs them."""
    import mlx.core as mx
    from mlx_lm.generate import BatchGenerator

    generator = BatchGenerator(model, completion_batch_size=len(prompts), prefill_batch_size=len(prompts))
    uids = generator.insert(prompts, max_tokens=[steps] * len(prompts))
    tokens: dict[int, list[int]] = {uid: [] for uid in uids}
    logprobs: dict[int, list] = {uid: [] for uid in uids}
    while any(len(t) < steps for t in tokens.values()):
        _, responses = generator.next()
        for response in responses:
            tokens[response.uid].append(response.token)
            logprobs[response.uid].append(response.logprobs)
    generator.close()
    return [tokens[u] for u in uids], [mx.stack(logprobs[u]) for u in uids]

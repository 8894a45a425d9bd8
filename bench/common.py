"""What the benchmarks share: the device name, a throwaway stack (Redis, API, workers) and
writing results."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from contract.settings import Settings  # noqa: E402
from tests.support import RedisServer, Stack, free_port  # noqa: E402

RESULTS = ROOT / "bench" / "results"


def device_name() -> str:
    """What MLX ran on: the GPU's name where nvidia-smi can tell it, else MLX's device."""
    import mlx.core as mx

    device = str(mx.default_device())
    if "gpu" in device and shutil.which("nvidia-smi"):
        names = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True, check=False
        ).stdout.split("\n")
        return f"{device} {names[0].strip()}"
    return f"{device} ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def sse_lines(response) -> Iterator[bytes]:
    """A streamed response's lines as soon as each arrives. requests' `iter_lines()` reads
    512 bytes at a time, and on a stream without chunked encoding (mlx_lm.server answers in
    HTTP/1.0, ended by closing) urllib3 waits until it has all 512: two or three events late,
    which made the peer's time to first token look longer than it was (measured here with the
    tiny model: 11.6–12.3 ms against 6.1–8.2 ms read as they land). `read1` takes what has
    arrived, one read at a time; on our chunked streams both ways agree."""
    pending = b""
    while chunk := response.raw.read1(65536):
        *lines, pending = (pending + chunk).split(b"\n")
        yield from (line.rstrip(b"\r") for line in lines)
    if pending:
        yield pending


def sse_chunks(response) -> Iterator[dict]:
    """A streamed completion's JSON chunks (its `data: {...}` lines), each as it lands."""
    for line in sse_lines(response):
        if line.startswith(b"data: {"):
            yield json.loads(line[6:])


def in_processes(argv: list[str], settings: list[str], variables: dict[str, str]) -> Iterator[tuple[str, dict]]:
    """For each setting, `argv` run in a process of its own with that setting in its
    environment (MLX reads its variables once, when it starts); yields (setting, the JSON the
    process printed last), or (setting, {"error": its stderr's tail}) when it failed. A setting
    is `default` (nothing set) or `key=value` pairs joined by commas, each key a name in
    `variables` (short name -> environment variable)."""
    parsed = {s: [] if s == "default" else [part.partition("=")[::2] for part in s.split(",")] for s in settings}
    unknown = sorted({key for pairs in parsed.values() for key, _ in pairs} - variables.keys())
    if unknown:  # before any process starts
        raise SystemExit(f"unknown setting {', '.join(unknown)}: use default or {', '.join(variables)} (key=value)")
    for setting, pairs in parsed.items():
        env = {**os.environ, **{variables[key]: value for key, value in pairs}}
        done = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            print(f"{setting:<22} failed: {done.stderr.strip().splitlines()[-1:]}", flush=True)
            yield setting, {"error": done.stderr[-2000:]}
        else:
            yield setting, json.loads(done.stdout.strip().splitlines()[-1])


@contextlib.contextmanager
def bench_stack(models_dir: str | None = None) -> Iterator[tuple[Stack, str, dict]]:
    """A Redis of its own, the API under gunicorn; yields (stack, API url, environment).
    Workers are the caller's to start (stack.start_worker); everything stops on exit."""
    tmp = Path(tempfile.mkdtemp(prefix="mis-bench-"))
    redis_server = RedisServer(free_port(), tmp / "redis").start()
    env = {
        **os.environ,
        "REDIS_URL": redis_server.url,
        "KEY_PREFIX": "bench:",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        "MODELS_DIR": models_dir or os.environ.get("MODELS_DIR", str(ROOT / "var" / "models")),
        "PROMPT_CACHE_DIR": str(tmp / "prompt-cache"),
    }
    stack = Stack(env=env, logs=tmp)
    try:
        # As many API processes as `make run` starts (WEB_CONCURRENCY), not the tests' one: a
        # burst's requests reach the queue that much sooner.
        _, url = stack.start_api(WEB_CONCURRENCY=str(Settings().web_concurrency))
        yield stack, url, env
    finally:
        stack.stop_all()
        redis_server.stop()


def write_result(out: Path, name: str, result: dict) -> Path:
    result = {
        **result,
        "machine": f"{platform.machine()} {platform.system()}",
        "web_concurrency": Settings().web_concurrency,  # API processes, where the bench ran the stack
        "device": device_name(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(result, indent=1))
    print(f"wrote {path}")
    return path

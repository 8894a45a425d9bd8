"""`python -m managers.announce`: the line that ends `make run`'s start-up, and one line as
each preloaded model becomes ready.

    python -m managers.announce [--text MODEL] [--vision MODEL] [--embedding MODEL]

Why a process of its own: honcho interleaves the logs of Redis, gunicorn and three managers,
and gunicorn's banner comes before any model has loaded. A person who typed `make run` wants
one line saying that the server answers, where to point a browser or a client, and which models
are still loading — then a line when each is ready (a 7B vision model can take minutes).

It waits for `GET /health` to answer (any HTTP answer: the API is up, even while Redis or the
workers are not), then watches the worker registry in Redis — what `GET /v1/models` lists —
rather than polling `/v1/models`: no API key is needed when API_KEYS is set, and gunicorn's
access log does not get a line every second.

It never exits on its own: honcho stops every process as soon as one exits, so after its lines
(or after giving up on the API) it sleeps until SIGTERM or SIGINT, then exits 0. Nothing here
imports mlx or Flask; it runs in the main venv beside the managers.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from types import FrameType

import redis

from contract import registry
from contract.context import Context
from contract.modelref import InvalidModelRef, parse_model_ref
from contract.settings import Settings

API_WAIT = 120.0
"""Seconds to wait for the API's first answer before saying it did not come (gunicorn starts
in a second or two once Redis is up; two minutes covers a slow first import)."""
POLL = 1.0
"""Seconds between looks at /health and at the registry: a line within a second of the event,
at the cost of one cheap request or Redis read."""
REQUEST_TIMEOUT = 2.0
"""A request that takes longer is a server not ready yet: try again."""
WILDCARD_HOSTS = {"0.0.0.0", "::", ""}
"""Binds that mean "every interface": from this machine the API is reached on loopback."""

Say = Callable[[str], None]


def say(line: str) -> None:
    # flush: under honcho stdout is a pipe, and a buffered line would appear only at exit
    print(line, flush=True)


def base_url(settings: Settings) -> str:
    """The API's address as seen from this machine (where `make run` runs)."""
    host = "127.0.0.1" if settings.host in WILDCARD_HOSTS else settings.host
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{settings.api_port}"


def answers(url: str, timeout: float = REQUEST_TIMEOUT) -> int | None:
    """The HTTP status `url` answers with (errors included), or None if nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status
    except urllib.error.HTTPError as e:
        return e.code
    except (OSError, ValueError):  # refused, reset, timed out (URLError is an OSError)
        return None


def wait_for_api(url: str, deadline: float, clock: Callable[[], float] = time.monotonic) -> bool:
    while answers(url) is None:
        if clock() >= deadline:
            return False
        time.sleep(POLL)
    return True


def expected_models(args: argparse.Namespace, settings: Settings) -> dict[str, str]:
    """Canonical model id -> kind, for each kind given a model (an empty one means none). The
    id is what the manager preloads and the registry shows (`./X` is `X`)."""
    models = {}
    for kind, ref in (("text", args.text), ("vision", args.vision), ("embedding", args.embedding)):
        if not ref:
            continue
        try:
            models[parse_model_ref(ref, settings.model_roots).name] = kind
        except InvalidModelRef:
            models[ref] = kind  # its manager refuses it and says why; match it as written
    return models


def named(models: dict[str, str]) -> str:
    return ", ".join(f"{model} ({kind})" for model, kind in models.items())


def ready_line(url: str, playground: bool, serving: dict[str, str], loading: dict[str, str]) -> str:
    parts = ([f"playground {url}/"] if playground else []) + [f"API {url}/v1"]
    if serving:
        parts.append(f"serving: {named(serving)}")
    if loading:
        parts.append(f"loading: {named(loading)}")
    if not serving and not loading:
        parts.append("no model preloaded")
    return "MLX Inference Server ready — " + " · ".join(parts)


class Watch:
    """The preloaded models not serving yet, and the lines to say as that changes."""

    def __init__(self, ctx: Context, expected: dict[str, str], say: Say = say) -> None:
        self.ctx, self.pending, self.say = ctx, dict(expected), say
        self.failed: set[str] = set()

    def serving_now(self) -> set[str]:
        workers = registry.live_workers(self.ctx.conn, self.ctx.keys)
        self._report_failures(workers)
        return set(registry.serving_models(workers))

    def take_serving(self) -> dict[str, str]:
        """The models serving already, no longer pending: the ready line names them at once."""
        try:
            serving = self.serving_now()
        except redis.RedisError:
            return {}
        return {m: self.pending.pop(m) for m in list(self.pending) if m in serving}

    def step(self) -> None:
        """One look at the registry: a line per model that became ready since the last."""
        serving = self.serving_now()
        for model in [m for m in self.pending if m in serving]:
            kind = self.pending.pop(model)
            rest = f" · still loading: {named(self.pending)}" if self.pending else " · all preloaded models are ready"
            self.say(f"ready: {model} ({kind}){rest}")

    def _report_failures(self, workers: list[registry.WorkerInfo]) -> None:
        # Once per model: its manager restarts the worker with back-off, which may fail the same way.
        for w in workers:
            if w.model in self.pending and w.state == registry.WorkerState.ERROR and w.model not in self.failed:
                self.failed.add(w.model)
                logs = self.ctx.settings.manager_logs_dir
                self.say(f"failed to load: {w.model} ({self.pending[w.model]}): {w.error} · see {logs}/")


def announce(args: argparse.Namespace, settings: Settings) -> None:
    url = base_url(settings)
    if not wait_for_api(f"{url}/health", time.monotonic() + API_WAIT):
        say(f"MLX Inference Server: the API did not answer on {url}/health within {API_WAIT:g} s (see the api lines)")
        return
    watch = Watch(Context.connect(settings), expected_models(args, settings))
    serving = watch.take_serving()
    say(ready_line(url, answers(f"{url}/") == 200, serving, watch.pending))
    while watch.pending:
        time.sleep(POLL)
        try:
            watch.step()
        except redis.RedisError:
            pass  # Redis restarting or briefly unreachable: look again next time


def _stop(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m managers.announce", description=__doc__.split("\n")[0])
    for kind in ("text", "vision", "embedding"):
        parser.add_argument(f"--{kind}", default="", metavar="MODEL", help=f"the {kind} model preloaded, if any")
    args = parser.parse_args(argv)
    # Ctrl-C reaches every process of the terminal's group; a quiet exit, not a traceback.
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        announce(args, Settings())
    except Exception as e:  # an announcement that fails must not take the server down with it
        say(f"MLX Inference Server: could not announce readiness ({type(e).__name__}: {e})")
    while True:  # honcho stops everything when one process exits; wait for its SIGTERM
        signal.pause()


if __name__ == "__main__":
    sys.exit(main())

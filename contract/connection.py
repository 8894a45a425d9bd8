"""Redis connections with settings that fit how we use them.

redis-py 8 defaults bite here (FACTS.md): a 5 s socket timeout would break blocking stream
reads, and 100 pooled connections is too few for hundreds of open SSE streams.
"""

from __future__ import annotations

import time

import redis

from contract.settings import Settings


def connect(settings: Settings, **overrides) -> redis.Redis:
    options = dict(
        socket_timeout=settings.redis_socket_timeout,
        socket_connect_timeout=settings.redis_connect_timeout,
        max_connections=settings.redis_max_connections,
        health_check_interval=30,
        retry_on_timeout=False,
    )
    options.update(overrides)
    return redis.Redis.from_url(settings.redis_url, **options)


def wait_for_redis(conn: redis.Redis, timeout: float) -> bool:
    """Poll PING until Redis answers or `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return bool(conn.ping())
        except redis.exceptions.ConnectionError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.1)

"""`Context`: the Redis connection, key names and settings one process works with.

Built once per process — the API's app factory (`app.extensions["mis"]`), a worker's or a
manager's start-up — and handed down, so no function rebuilds `Keys(settings.key_prefix)`
or reads the environment again. Bookkeeping job functions, which rq calls with their payload
only, get theirs from `Context.for_current_job()` (the job's own connection).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import redis
from rq import get_current_job

from contract.connection import connect
from contract.keys import Keys
from contract.settings import Settings


@dataclass(frozen=True)
class Context:
    conn: redis.Redis
    keys: Keys
    settings: Settings

    @classmethod
    def connect(cls, settings: Settings | None = None, **overrides) -> Context:
        """A context on a new connection (pool) to the settings' Redis; `overrides` go to
        contract.connection.connect."""
        settings = settings or Settings()
        return cls(connect(settings, **overrides), Keys(settings.key_prefix), settings)

    @classmethod
    def of(cls, conn: redis.Redis, settings: Settings) -> Context:
        """A context on a connection the caller already holds."""
        return cls(conn, Keys(settings.key_prefix), settings)

    @classmethod
    def for_current_job(cls) -> Context:
        """Inside a job function run by a worker: the job's connection, this process's settings
        (read once per process: a worker's environment does not change while it runs)."""
        job = get_current_job()
        assert job is not None, "for_current_job() is for job functions a worker runs"
        return cls.of(job.connection, _process_settings())


@functools.cache
def _process_settings() -> Settings:
    return Settings()

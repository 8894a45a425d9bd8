"""Step writes whose round trip overlaps the next engine step.

A worker writes to Redis once per engine step (every job's new stream entries plus the
cancel-flag reads). Waiting for the replies would stall generation for a round trip every
step; measured on an H200, the synchronous pipeline cost ~0.25 ms per token, 7–10 % of a
small model's decode speed. So `StepSender.send` writes the step's commands on its own
connection and returns at once; their replies are read at the next `send`, by which time
they have long arrived. Plain pipelining on one socket, in one thread: no GIL hand-offs (a
writer thread was tried; on a 2-core CPU its hand-offs cost more than the round trip).

The price: a cancel flag set during step k is seen after step k+1. `flush()` waits for every
reply; a job calls it before it ends, so when rq marks a job finished its stream is complete.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from redis.connection import Connection

from contract.context import Context
from contract.stream import TERMINAL, EventType, entry_commands

StepEvent = tuple[str, EventType, dict]
"""(job id, event type, data) for one stream entry."""


class StepSender:
    def __init__(self, ctx: Context):
        self.pool = ctx.conn.connection_pool
        self.keys, self.settings = ctx.keys, ctx.settings
        self.connection: Connection | None = None
        self.in_flight: list[list[str] | None] = []
        """One slot per command sent and not yet answered: the job ids whose cancel flags
        the command reads (one MGET for all of them), None for writes."""
        self.kept_for: Callable[[str], int] = lambda job_id: self.settings.result_ttl
        """Seconds a job's stream is kept after its ending: its rq `result_ttl` (the engine
        loop sets this), RESULT_TTL for a stored completion, UNSTORED_TTL otherwise."""

    def send(self, events: list[StepEvent], watch: Sequence[str] = ()) -> set[str]:
        """Write `events` and read the cancel flags of `watch`, without waiting. Returns the
        jobs whose cancel flag the previous send found set."""
        cancelled = self._collect()
        commands: list[tuple] = []
        slots: list[list[str] | None] = []
        for job_id, event_type, data in events:
            for command in entry_commands(
                self.keys.stream(job_id),
                event_type,
                data,
                maxlen=self.settings.stream_maxlen,
                # `start` must outlive the job whatever happens (RESULT_TTL ≥ JOB_TIMEOUT);
                # the ending sets how long the finished answer stays.
                ttl=self.kept_for(job_id) if event_type in TERMINAL else self.settings.result_ttl,
            ):
                commands.append(command)
                slots.append(None)
        if watch:
            commands.append(("MGET", *(self.keys.cancel(job_id) for job_id in watch)))
            slots.append(list(watch))
        if commands:
            connection = self._connection()
            try:
                connection.send_packed_command(connection.pack_commands(commands))
            except BaseException:
                self.reset()
                raise
            self.in_flight = slots
        return cancelled

    def poll(self) -> set[str]:
        """The cancel flags the last send read, waiting for its replies (they have arrived
        when a step took long); the connection stays ours for the next send."""
        return self._collect()

    def flush(self) -> set[str]:
        """Wait until everything sent is in Redis; returns cancel flags found set. The
        connection goes back to the pool, whose checkout replaces a socket that died while
        idle (a Redis restart between jobs must not fail the next job)."""
        cancelled = self._collect()
        if self.connection is not None:
            self.pool.release(self.connection)
            self.connection = None
        return cancelled

    def reset(self) -> None:
        """Forget replies in flight (after an error or an interrupted step): the connection
        is closed so no stale reply is ever read as a fresh one."""
        if self.connection is not None:
            self.connection.disconnect()
            self.pool.release(self.connection)
        self.connection, self.in_flight = None, []

    def _connection(self):
        if self.connection is None:
            self.connection = self.pool.get_connection()
        return self.connection

    def _collect(self) -> set[str]:
        if not self.in_flight:
            return set()
        cancelled: set[str] = set()
        assert self.connection is not None  # replies in flight arrive on the connection they were sent on
        try:
            for job_ids in self.in_flight:
                reply = self.connection.read_response()
                if job_ids is not None:
                    cancelled.update(j for j, flag in zip(job_ids, reply, strict=True) if flag is not None)
        except BaseException:
            self.reset()
            raise
        self.in_flight = []
        return cancelled

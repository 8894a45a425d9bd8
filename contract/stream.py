"""The token-stream protocol: one Redis Stream per job, written by the worker that runs it,
read by the API from the start (`XREAD` from `0`), so a late reader loses nothing.

Entry types (`EventType`): `start` when generation begins, `delta` with new text (and
`reasoning` text, `tool_calls` fragments, `logprobs`), `done`
with the finish reason and usage, `error` with an OpenAI-style code and a safe message,
`cancelled` when a cancel request stopped the job, `progress` for long jobs. Every stream
ends with exactly one of done / error / cancelled.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from enum import StrEnum
from typing import cast

import redis

from contract.keys import Keys


class EventType(StrEnum):
    START = "start"
    DELTA = "delta"
    DONE = "done"
    ERROR = "error"
    CANCELLED = "cancelled"
    PROGRESS = "progress"


TERMINAL = frozenset({EventType.DONE, EventType.ERROR, EventType.CANCELLED})


@dataclass(frozen=True)
class Event:
    type: EventType
    id: str = ""
    data: dict = field(default_factory=dict)

    @property
    def is_terminal(self) -> bool:
        return self.type in TERMINAL


BLOB = "blob:"
"""Prefix of an entry field that carries one `bytes` value of the event's data as it is (an
embedding job's vectors: megabytes that base64 inside JSON would cost ~40 ms to pack and
unpack on each side)."""


def _encode(event_type: EventType, data: dict) -> dict[str, str | bytes]:
    blobs = {BLOB + k: v for k, v in data.items() if isinstance(v, bytes)}
    rest = {k: v for k, v in data.items() if not isinstance(v, bytes)}
    return {"type": event_type.value, "data": json.dumps(rest, separators=(",", ":")), **blobs}


def _decode(entry_id: bytes | str, fields: dict) -> Event:
    raw = {(k.decode() if isinstance(k, bytes) else k): v for k, v in fields.items()}
    data = json.loads(_text(raw.get("data", b"{}")))
    data.update({k.removeprefix(BLOB): v for k, v in raw.items() if k.startswith(BLOB)})
    entry = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    return Event(EventType(_text(raw["type"])), entry, data)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def entry_commands(key: str, event_type: EventType, data: dict, *, maxlen: int, ttl: int) -> list[tuple]:
    """The Redis commands that append one event (the only place that shapes a stream entry)."""
    fields = [part for pair in _encode(event_type, data).items() for part in pair]
    commands: list[tuple] = [("XADD", key, "MAXLEN", "~", maxlen, "*", *fields)]
    # `start` sets the expiry and the terminal event restarts it, so a stream outlives its
    # job by `ttl` and one whose worker vanished still expires. Deltas leave it alone: one
    # command less on every engine step (Settings keeps ttl >= the job timeout).
    if event_type != EventType.DELTA:
        commands.append(("EXPIRE", key, ttl))
    return commands


def join_calls(calls: dict[int, dict], fragments: list[dict]) -> None:
    """Add a delta's tool-call fragments (`data["tool_calls"]`: a call's first names it, the
    rest carry `arguments` pieces) to the calls joined so far, by index."""
    for fragment in fragments:
        call = calls.setdefault(
            fragment["index"], {"id": "", "type": "function", "function": {"name": "", "arguments": ""}}
        )
        call["id"] = fragment.get("id") or call["id"]
        function = fragment.get("function", {})
        call["function"]["name"] += function.get("name", "")
        call["function"]["arguments"] += function.get("arguments", "")


class StreamWriter:
    """Appends events to one job's stream, one round trip each (or on a given pipeline).
    For writers outside a worker (the API ending a job cancelled while queued); workers
    write through `runtime.steps.StepSender`."""

    def __init__(self, conn: redis.Redis, keys: Keys, job_id: str, *, maxlen: int, ttl: int):
        self.conn = conn
        self.job_id = job_id
        self.key = keys.stream(job_id)
        self.maxlen = maxlen
        self.ttl = ttl

    def write(self, event_type: EventType, data: dict | None = None, pipeline=None) -> None:
        pipe = pipeline if pipeline is not None else self.conn.pipeline(transaction=False)
        for command in entry_commands(self.key, event_type, data or {}, maxlen=self.maxlen, ttl=self.ttl):
            pipe.execute_command(*command)
        if pipeline is None:
            pipe.execute()

    def cancelled(self, pipeline=None, **data) -> None:
        self.write(EventType.CANCELLED, data, pipeline)


class StreamReader:
    """Reads one job's events in order from the start (`XREAD` from `0`), so a reader that
    arrives late loses nothing; remembers where it got to."""

    def __init__(self, conn: redis.Redis, keys: Keys, job_id: str, last_id: str = "0"):
        self.conn = conn
        self.key = keys.stream(job_id)
        self.last_id = last_id

    def read(self, block_ms: int | None = None) -> list[Event]:
        """Events after the last one read; waits up to `block_ms` for one (None: no wait)."""
        reply = cast(list, self.conn.xread({self.key: self.last_id}, count=512, block=block_ms))
        if not reply:
            return []
        return self.accept(reply[0][1])  # [[stream key, [(entry id, {field: value}), ...]]]

    def accept(self, entries: list) -> list[Event]:
        """Events of entries read for this reader elsewhere (`read_many`)."""
        events = [_decode(entry_id, fields) for entry_id, fields in entries]
        if events:
            self.last_id = events[-1].id
        return events

    def read_all(self) -> list[Event]:
        """Every event written so far (a finished job's whole stream), without waiting."""
        events: list[Event] = []
        while batch := self.read():
            events += batch
        return events


def read_many(conn: redis.Redis, readers: list[StreamReader], block_ms: int | None = None) -> list[list[Event]]:
    """One XREAD for several readers (the n choices of one request): the events after each
    one's last, in the readers' order; waits up to `block_ms` for any (None: no wait)."""
    reply = cast(list, conn.xread({r.key: r.last_id for r in readers}, count=512, block=block_ms)) or []
    by_key = {(k.decode() if isinstance(k, bytes) else k): entries for k, entries in reply}
    return [r.accept(by_key.get(r.key, [])) for r in readers]

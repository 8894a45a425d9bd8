"""A response of the Responses API, built from its job's events.

`ResponseBuilder` is fed a chat job's stream events (start, deltas, the ending) in order and
turns them into the Responses API's events — `response.created`, `response.in_progress`,
`response.output_item.added`, `response.content_part.added`, `response.output_text.delta`,
`response.reasoning_text.delta`, `response.function_call_arguments.delta`, the `.done`s,
`response.completed` / `response.incomplete` / `response.failed` — each numbered
(`sequence_number`), and into the response object (`snapshot()`). It is a pure function of
the job's stream: the same events always give the same numbered sequence, so a client that
resumes a stream with `starting_after=N` gets every event after N exactly once, whichever
API process (or a restarted one) serves it — the stream in Redis is the only state.

Output items: a `reasoning` item (the model's thinking, as `reasoning_text` content), a
`message` item (`output_text`), a `function_call` item per call, in the order generated.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

from contract.results import http_status
from contract.stream import Event, EventType

ENDED = frozenset({"completed", "incomplete", "failed", "cancelled"})
"""The statuses a response ends in."""


@dataclass
class ResponseBuilder:
    response_id: str
    record: dict
    """The stored request (api/responses.py `_record`): model, options, created_at."""
    status: str = "queued"
    output: list[dict] = field(default_factory=list)
    usage: dict | None = None
    error: dict | None = None
    incomplete: dict | None = None
    completed_at: float | None = None
    seq: int = 0
    _open: dict | None = None
    """The output item being generated (the last of `output` until it is done)."""
    _calls: dict[int, dict] = field(default_factory=dict)
    """Function-call items by the job's call index."""

    @property
    def ended(self) -> bool:
        return self.status in ENDED

    def opening(self) -> list[dict]:
        """The first events: created (and queued, for a background response)."""
        if self.record.get("background"):
            return [self._event("response.created", response=self.snapshot()), self._queued()]
        self.status = "in_progress"
        return [self._event("response.created", response=self.snapshot())]

    def feed(self, event: Event) -> list[dict]:
        if event.type == EventType.START:
            self.status = "in_progress"
            return [self._event("response.in_progress", response=self.snapshot())]
        if event.type == EventType.DELTA:
            return self._delta(event.data)
        if event.type in (EventType.DONE, EventType.ERROR, EventType.CANCELLED):
            return self._end(event)
        return []

    def snapshot(self) -> dict:
        r = self.record
        return {
            "id": self.response_id,
            "object": "response",
            "created_at": r["created_at"],
            "status": self.status,
            "background": r.get("background", False),
            "completed_at": self.completed_at,
            "error": self.error,
            "incomplete_details": self.incomplete,
            "instructions": r.get("instructions"),
            "max_output_tokens": r.get("max_output_tokens"),
            "metadata": r.get("metadata") or {},
            "model": r["model"],
            "output": self.output,
            "parallel_tool_calls": r.get("parallel_tool_calls", True),
            "previous_response_id": r.get("previous_response_id"),
            "reasoning": r.get("reasoning") or {"effort": None, "summary": None},
            "store": r.get("store", True),
            "temperature": r.get("temperature"),
            "text": r.get("text") or {"format": {"type": "text"}},
            "tool_choice": r.get("tool_choice") or "auto",
            "tools": r.get("tools") or [],
            "top_p": r.get("top_p"),
            "truncation": "disabled",
            "usage": self.usage,
            "user": r.get("user"),
        }

    # -- deltas ------------------------------------------------------------------------

    def _delta(self, data: dict) -> list[dict]:
        events: list[dict] = []
        if data.get("reasoning"):
            events += self._reasoning(data["reasoning"])
        if data.get("text"):
            events += self._text(data["text"], data.get("logprobs") or [])
        for fragment in data.get("tool_calls") or []:
            events += self._call(fragment)
        return events

    def _reasoning(self, text: str) -> list[dict]:
        events = []
        if self._open is None or self._open["type"] != "reasoning":
            events += self._close()
            item = {
                "id": _item_id(self.response_id, "rs", len(self.output)),
                "type": "reasoning",
                "summary": [],
                "content": [{"type": "reasoning_text", "text": ""}],
                "status": "in_progress",
            }
            events += self._add(item)
            events.append(self._part_event("response.content_part.added", {"type": "reasoning_text", "text": ""}))
        assert self._open is not None
        self._open["content"][0]["text"] += text
        events.append(self._part_event("response.reasoning_text.delta", delta=text))
        return events

    def _text(self, text: str, logprobs: list) -> list[dict]:
        events = []
        if self._open is None or self._open["type"] != "message":
            events += self._close()
            item: dict = {
                "id": _item_id(self.response_id, "msg", len(self.output)),
                "type": "message",
                "status": "in_progress",
                "role": "assistant",
                "content": [],
            }
            events += self._add(item)
            part: dict = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
            item["content"] = [part]
            events.append(self._part_event("response.content_part.added", dict(part)))
        assert self._open is not None
        self._open["content"][0]["text"] += text
        events.append(self._part_event("response.output_text.delta", delta=text, logprobs=_logprobs(logprobs)))
        return events

    def _call(self, fragment: dict) -> list[dict]:
        events = []
        item = self._calls.get(fragment["index"])
        function = fragment.get("function", {})
        if item is None:
            events += self._close()
            item = {
                "id": _item_id(self.response_id, "fc", len(self.output)),
                "type": "function_call",
                "status": "in_progress",
                "call_id": fragment.get("id") or "",
                "name": function.get("name", ""),
                "arguments": "",
            }
            self._calls[fragment["index"]] = item
            events += self._add(item)
        if function.get("arguments"):
            item["arguments"] += function["arguments"]
            events.append(
                self._event(
                    "response.function_call_arguments.delta",
                    item_id=item["id"],
                    output_index=len(self.output) - 1,
                    delta=function["arguments"],
                )
            )
        return events

    def _add(self, item: dict) -> list[dict]:
        self.output.append(item)
        self._open = item
        added = {**item, "content": []} if "content" in item else dict(item)
        return [self._event("response.output_item.added", output_index=len(self.output) - 1, item=added)]

    def _part_event(self, kind: str, part: dict | None = None, **fields) -> dict:
        assert self._open is not None
        body = {"item_id": self._open["id"], "output_index": len(self.output) - 1, "content_index": 0, **fields}
        if part is not None:
            body["part"] = part
        return self._event(kind, **body)

    def _close(self, status: str = "completed") -> list[dict]:
        """The `.done` events of the open item."""
        item = self._open
        if item is None:
            return []
        events = []
        if item["type"] == "reasoning":
            text = item["content"][0]["text"]
            events.append(self._part_event("response.reasoning_text.done", text=text))
            events.append(self._part_event("response.content_part.done", {"type": "reasoning_text", "text": text}))
        elif item["type"] == "message":
            part = item["content"][0]
            events.append(self._part_event("response.output_text.done", text=part["text"], logprobs=part["logprobs"]))
            events.append(self._part_event("response.content_part.done", dict(part)))
        else:
            events.append(
                self._event(
                    "response.function_call_arguments.done",
                    item_id=item["id"],
                    output_index=len(self.output) - 1,
                    name=item["name"],
                    arguments=item["arguments"],
                )
            )
        self._open = None
        item["status"] = status
        events.append(self._event("response.output_item.done", output_index=len(self.output) - 1, item=dict(item)))
        return events

    # -- the ending --------------------------------------------------------------------

    def _end(self, event: Event) -> list[dict]:
        # The ending's stream entry id is its time in ms: a replay gives the same value.
        self.completed_at = int(event.id.split("-")[0]) / 1000 if event.id else time.time()
        if event.type == EventType.DONE:
            self.usage = _usage(event.data.get("usage") or {})
            if event.data.get("finish_reason") == "length":
                self.status, self.incomplete = "incomplete", {"reason": "max_output_tokens"}
                events = self._close("incomplete")
                return [*events, self._event("response.incomplete", response=self.snapshot())]
            self.status = "completed"
            events = self._close()
            return [*events, self._event("response.completed", response=self.snapshot())]
        events = self._close("incomplete")
        if event.type == EventType.CANCELLED:
            self.status = "cancelled"
            self.error = {"code": "cancelled", "message": "the response was cancelled"}
        else:
            code = event.data.get("code") or "server_error"
            self.status = "failed"
            self.error = {
                "code": code,
                "message": event.data.get("message", "generation failed"),
                "status": http_status(code),
            }
        return [*events, self._event("response.failed", response=self.snapshot())]

    def _queued(self) -> dict:
        return self._event("response.queued", response=self.snapshot())

    def _event(self, kind: str, **fields) -> dict:
        event = {"type": kind, "sequence_number": self.seq, **fields}
        self.seq += 1
        return event


def _item_id(response_id: str, prefix: str, index: int) -> str:
    """Stable item ids (a replayed stream names the same items): the response's and the index."""
    return f"{prefix}_{response_id.removeprefix('resp_')}_{index}"


def _usage(usage: dict) -> dict:
    prompt, completion = usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0)
    reasoning = (usage.get("completion_tokens_details") or {}).get("reasoning_tokens", 0)
    cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0)
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": cached},
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": reasoning},
        "total_tokens": prompt + completion,
    }


def _logprobs(entries: list) -> list:
    return [{"token": e["token"], "logprob": e["logprob"], "top_logprobs": []} for e in entries if "token" in e]


def sse_event(event: dict) -> str:
    payload = json.dumps(event, separators=(",", ":"), ensure_ascii=False)
    return f"event: {event['type']}\ndata: {payload}\n\n"

"""Legacy completions: `POST /v1/completions` (OpenAI's `text_completion`, JSON or SSE).

A raw prompt, no chat template (api/legacy_request.py): a job per prompt and choice
(api/intake.py `completion_payloads`), read as one (api/choices.py). `echo` puts the prompt
before its choices' text; `logprobs: N` gives each generated token's logprob and its N most
likely alternatives in the legacy layout (`tokens`, `token_logprobs`, `top_logprobs`,
`text_offset`). Nothing is stored: a legacy completion is not readable by id afterwards.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import chain

from flask import Blueprint, Response, current_app, jsonify

from contract.queues import new_job_id
from contract.stream import Event, EventType

from . import request_id
from .bodies import json_body
from .choices import choice_frames, enqueue_choices, first_of, read_choices
from .completions import SSE_DONE, SSE_KEEPALIVE, joined_usage, sse
from .delivery import sse_response, then
from .intake import completion_payloads
from .legacy_request import CompletionRequest

bp = Blueprint("legacy", __name__, url_prefix="/v1")


@dataclass
class TextChoice:
    echo: str
    """The prompt's text when `echo` (known from the request, or from the worker for ids)."""
    text: str = ""
    logprobs: list[dict] = field(default_factory=list)
    finish_reason: str | None = None
    usage: dict | None = None


@dataclass
class TextCompletion:
    completion_id: str
    model: str
    choices: list[TextChoice]
    n: int
    want_logprobs: bool
    echo: bool
    created: int = field(default_factory=lambda: int(time.time()))

    def add(self, index: int, event: Event) -> str:
        """Take one event of choice `index`; returns the text it adds (echo included)."""
        choice = self.choices[index]
        if event.type == EventType.START:
            if self.echo:
                choice.echo = event.data.get("prompt_text", choice.echo)
            return choice.echo
        if event.type == EventType.DELTA:
            choice.text += event.data.get("text", "")
            choice.logprobs.extend(event.data.get("logprobs", []))
            return event.data.get("text", "")
        if event.type == EventType.DONE:
            choice.finish_reason, choice.usage = event.data["finish_reason"], event.data["usage"]
        return ""

    def usage(self) -> dict | None:
        """The prompts once each, every choice's completion tokens (per prompt, then summed)."""
        per_prompt = [
            joined_usage([c.usage for c in self.choices[i : i + self.n]]) for i in range(0, len(self.choices), self.n)
        ]
        if any(u is None for u in per_prompt):
            return None
        prompt = sum(u["prompt_tokens"] for u in per_prompt if u)
        completion = sum(u["completion_tokens"] for u in per_prompt if u)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    def head(self) -> dict:
        """What the completion and its chunks share."""
        return {
            "id": self.completion_id,
            "object": "text_completion",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": None,
        }

    def response(self) -> dict:
        return {
            **self.head(),
            "choices": [
                {
                    "index": i,
                    "text": c.echo + c.text,
                    "logprobs": legacy_logprobs(c.logprobs, len(c.echo)) if self.want_logprobs else None,
                    "finish_reason": c.finish_reason,
                }
                for i, c in enumerate(self.choices)
            ],
            "usage": self.usage(),
        }

    def chunk(self, index: int, text: str, logprobs: dict | None = None, finish_reason: str | None = None) -> dict:
        return {
            **self.head(),
            "choices": [{"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish_reason}],
        }


def legacy_logprobs(entries: list[dict], offset: int = 0) -> dict:
    """The chat path's per-token logprobs in the legacy layout; `text_offset` counts from
    `offset` (after an echoed prompt)."""
    tokens, offsets = [], []
    for entry in entries:
        offsets.append(offset)
        tokens.append(entry["token"])
        offset += len(entry["token"])
    return {
        "tokens": tokens,
        "token_logprobs": [e["logprob"] for e in entries],
        "top_logprobs": [{t["token"]: t["logprob"] for t in e.get("top_logprobs", [])} for e in entries],
        "text_offset": offsets,
    }


@bp.post("/completions")
def completions():
    ctx = current_app.extensions["mis"]
    job_id = new_job_id()
    request_id.assign(f"cmpl-{job_id}")
    req = CompletionRequest.model_validate(json_body(), context={"settings": ctx.settings})
    kind, payloads = completion_payloads(ctx, req)
    prompts = [p for p in req.prompts() for _ in range(req.n)]
    completion = TextCompletion(
        f"cmpl-{job_id}",
        payloads[0].model,
        [TextChoice(echo=p if req.echo and isinstance(p, str) else "") for p in prompts],
        req.n,
        req.logprobs is not None,
        req.echo,
    )
    fanin = enqueue_choices(ctx, payloads, kind, job_id)
    if not req.stream:
        if not read_choices(fanin, completion.add):
            return Response(status=499)  # nobody reads it; its jobs were cancelled
        body = jsonify(completion.response()).get_data()
        return Response(then(body, fanin.sent), mimetype="application/json", headers={"Content-Length": str(len(body))})
    with_usage = bool(req.stream_options and req.stream_options.include_usage)

    def frames(item: tuple[int, Event] | None) -> Iterator[str]:
        if item is None:
            yield SSE_KEEPALIVE
            return
        index, event = item
        text = completion.add(index, event)
        if event.type == EventType.START and req.echo and text:
            yield sse(completion.chunk(index, text))
        elif event.type == EventType.DELTA:
            choice = completion.choices[index]
            offset = len(choice.echo) + len(choice.text) - len(text)  # where this piece starts
            entries = event.data.get("logprobs", [])
            logprobs = legacy_logprobs(entries, offset) if completion.want_logprobs else None
            yield sse(completion.chunk(index, text, logprobs))
        elif event.type == EventType.DONE:
            yield sse(completion.chunk(index, "", finish_reason=completion.choices[index].finish_reason))
            if fanin.finished:
                if with_usage:
                    yield sse({**completion.head(), "choices": [], "usage": completion.usage()})
                yield SSE_DONE
                fanin.sent()

    events = fanin.events()
    first = first_of(fanin, events)
    return sse_response(choice_frames(fanin, chain([first], events), frames, lambda error: sse(error.body())))

"""Text generation over mlx-lm: chat templating, sampling, stop sequences, logprobs.

Pure steps, no Redis: `generate` turns a `ChatJob` into a sequence of `Step`s that the job
function relays. Text is only released once it can no longer turn out to be the start of a
stop sequence, so a stop string never reaches the client, even split across tokens.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import mlx.core as mx
from mlx_lm import stream_generate
from mlx_lm.sample_utils import make_logits_processors, make_sampler

from jobs.payloads import ChatJob, TokenLogprob


class RequestRejected(ValueError):
    """The request cannot be served by this model; `code` and the message go to the client."""

    code = "invalid_value"


class PromptTooLong(RequestRejected):
    code = "context_length_exceeded"

    def __init__(self, prompt_tokens: int, context_length: int):
        super().__init__(
            f"this model's context length is {context_length} tokens; the messages take "
            f"{prompt_tokens}"
        )


@dataclass
class TextModel:
    model_id: str
    model: object
    tokenizer: object
    context_length: int
    vocab_size: int

    def encode_chat(self, job: ChatJob) -> list[int]:
        messages = [m.model_dump() for m in job.messages]
        if getattr(self.tokenizer, "chat_template", None):
            text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            return self.tokenizer.encode(text, add_special_tokens=False)
        # No template: plain "role: content" lines, as mlx_lm.server does.
        text = "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant: "
        return self.tokenizer.encode(text)


@dataclass
class Step:
    """One engine step of one job: text safe to send now, and the token that produced it."""

    text: str
    token: int
    completion_tokens: int
    logprob: TokenLogprob | None = None
    finish_reason: str | None = None


class StopMatcher:
    """Holds back text that might begin a stop sequence; cuts the output at the first one."""

    def __init__(self, stops: list[str]):
        self.stops = [s for s in stops if s]
        self.pending = ""

    def feed(self, text: str) -> tuple[str, bool]:
        """Returns (text safe to emit, whether a stop sequence was hit)."""
        self.pending += text
        if not self.stops:
            out, self.pending = self.pending, ""
            return out, False
        hits = [i for i in (self.pending.find(s) for s in self.stops) if i >= 0]
        if hits:
            out, self.pending = self.pending[: min(hits)], ""
            return out, True
        keep = self._longest_stop_prefix_suffix()
        out = self.pending[: len(self.pending) - keep]
        self.pending = self.pending[len(out):]
        return out, False

    def flush(self) -> str:
        out, self.pending = self.pending, ""
        return out

    def _longest_stop_prefix_suffix(self) -> int:
        best = 0
        for stop in self.stops:
            for n in range(min(len(stop) - 1, len(self.pending)), best, -1):
                if self.pending.endswith(stop[:n]):
                    best = n
                    break
        return best


def generate(engine: TextModel, job: ChatJob, prompt: list[int]) -> Iterator[Step]:
    """Yield steps until EOS, a stop sequence or max_tokens; the last has finish_reason."""
    if len(prompt) >= engine.context_length:
        raise PromptTooLong(len(prompt), engine.context_length)
    params = job.sampling
    if params.logit_bias and max(params.logit_bias) >= engine.vocab_size:
        raise RequestRejected(
            f"logit_bias names token ids beyond this model's vocabulary ({engine.vocab_size})")
    if params.seed is not None:
        mx.random.seed(params.seed)
    sampler = make_sampler(temp=params.temperature, top_p=params.top_p, min_p=params.min_p, top_k=params.top_k)
    processors = make_logits_processors(
        logit_bias=params.logit_bias or None,
        repetition_penalty=params.repetition_penalty,
        presence_penalty=params.presence_penalty or None,
        frequency_penalty=params.frequency_penalty or None,
    )
    max_tokens = min(job.max_tokens, engine.context_length - len(prompt))
    stops = StopMatcher(job.stop)
    for response in stream_generate(engine.model, engine.tokenizer, mx.array(prompt),
                                    max_tokens=max_tokens, sampler=sampler, logits_processors=processors):
        text, stopped = stops.feed(response.text)
        finish = "stop" if stopped else response.finish_reason
        if finish is not None and not stopped:
            text += stops.flush()
        logprob = _logprob(engine.tokenizer, response, job.top_logprobs) if job.logprobs else None
        yield Step(text, response.token, response.generation_tokens, logprob, finish)
        if finish is not None:
            return


def _logprob(tokenizer, response, top_n: int) -> TokenLogprob:
    logprobs = response.logprobs
    top: list[dict] = []
    if top_n:
        ids = mx.argpartition(-logprobs, kth=top_n - 1)[:top_n]
        values = logprobs[ids].tolist()
        ranked = sorted(zip(ids.tolist(), values, strict=True), key=lambda p: -p[1])
        top = [_token_entry(tokenizer, i, v) for i, v in ranked]
    entry = _token_entry(tokenizer, response.token, logprobs[response.token].item())
    return TokenLogprob(**entry, top_logprobs=top)


def _token_entry(tokenizer, token_id: int, logprob: float) -> dict:
    text = tokenizer.decode([token_id])
    return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}

"""Log-probabilities as OpenAI reports them: the chosen token's, and the `top_n` most likely
tokens at that step, each with its text and UTF-8 bytes."""

from __future__ import annotations

from typing import Any, cast

import mlx.core as mx

from contract.payloads import TokenLogprob


def token_logprob(tokenizer: Any, logprobs: mx.array, token: int, top_n: int) -> TokenLogprob:
    """`logprobs`: the step's log-probabilities over the vocabulary (one row)."""
    top: list[dict] = []
    if top_n:
        ids = mx.argpartition(-logprobs, kth=top_n - 1)[:top_n]
        ranked = sorted(
            zip(cast(list[int], ids.tolist()), cast(list[float], logprobs[ids].tolist()), strict=True),
            key=lambda p: -p[1],
        )
        top = [token_entry(tokenizer, i, v) for i, v in ranked]
    return TokenLogprob(**token_entry(tokenizer, token, cast(float, logprobs[token].item())), top_logprobs=top)


def token_entry(tokenizer: Any, token_id: int, logprob: float) -> dict:
    text = tokenizer.decode([token_id])
    return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}

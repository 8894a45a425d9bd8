"""Constrained decoding: a grammar (llguidance) masks one sequence's logits inside the batch.

The API turns `response_format` into an llguidance grammar and checks it (api/structured.py);
the job carries the grammar's text. Here each constrained sequence gets a `GrammarProcessor`:
an mlx-lm logits processor, which mlx-lm's `BatchGenerator` calls for that row only, so an
unconstrained sequence in the same batch is untouched (its logits, its sampling) and a
constrained one never sees another's state.

Why llguidance (over xgrammar and outlines-core): a Rust core with no torch, wheels for Linux
and macOS, masks computed in tens of microseconds per token without a per-schema compile of
the whole vocabulary (it walks a token trie lazily), JSON Schema with `$ref`, `anyOf`, enums,
bounds and string formats, plus Lark grammars and regexes, and `validate_grammar` without a
tokenizer — so the API can refuse what it cannot enforce before anything is queued.
"""

from __future__ import annotations

import logging
import time
from typing import Any, cast

import llguidance
import llguidance.hf
import mlx.core as mx
import numpy as np

from runtime.rejections import RequestRejected

log = logging.getLogger(__name__)


class InvalidGrammar(RequestRejected):
    code = "invalid_response_format"

    def __init__(self, message: str):
        super().__init__(message, param="response_format")


class Grammars:
    """A model's llguidance tokenizer (built on first use: about a second for a large
    vocabulary) and the processors of its constrained requests."""

    def __init__(self, hf_tokenizer: Any, vocab_size: int, eos_ids: list[int]):
        self.hf_tokenizer, self.vocab_size, self.eos_ids = hf_tokenizer, vocab_size, eos_ids
        self._tokenizer: llguidance.LLTokenizer | None = None

    @property
    def tokenizer(self) -> llguidance.LLTokenizer:
        if self._tokenizer is None:
            self._tokenizer = llguidance.hf.from_tokenizer(
                self.hf_tokenizer, n_vocab=self.vocab_size, eos_token=self.eos_ids or None
            )
        return self._tokenizer

    def processor(self, grammar: str) -> GrammarProcessor:
        matcher = llguidance.LLMatcher(self.tokenizer, grammar, log_level=0)
        if matcher.is_error():
            raise InvalidGrammar(f"response_format cannot be enforced for this model: {matcher.get_error()[:300]}")
        return GrammarProcessor(matcher, self.vocab_size, self.eos_ids)


class GrammarProcessor:
    """The logits processor of one constrained sequence.

    mlx-lm calls it once per step with the sequence's tokens so far — the last one being the
    token this step feeds the model (at the first call, the last prompt token) — and the
    step's logits, still lazy. The matcher takes that token (waiting for the previous step's
    sampling: the one synchronisation a grammar needs), computes the mask for the next token
    (microseconds to a millisecond), and masks the logits.
    """

    def __init__(self, matcher: llguidance.LLMatcher, vocab_size: int, eos_ids: list[int]):
        self.matcher = matcher
        self.vocab_size = vocab_size
        self.bitmask = np.zeros((vocab_size + 31) // 32, dtype=np.int32)
        self.eos_only = np.zeros(vocab_size, dtype=bool)
        self.eos_only[[i for i in eos_ids if 0 <= i < vocab_size]] = True
        self.fed = False
        self.mask_s = 0.0
        """Seconds spent computing masks (bench/structured.py reports it per step)."""
        self.steps = 0

    def __call__(self, tokens: mx.array, logits: mx.array) -> mx.array:
        # No mx.async_eval(logits) here to start the forward pass early: measured on an H200
        # (7B shape, 8 rows) it cost 12% — each row's call evaluates its own slice. (The text
        # engine masks all its rows in one step instead: worker_text/constrained.py.)
        self.advance(cast(int, tokens[-1].item()))
        allowed = self._allowed(logits.shape[-1])
        return mx.where(mx.array(allowed), logits, mx.array(-mx.inf, dtype=logits.dtype))

    def advance(self, token: int) -> None:
        """The token the model is fed this step: the matcher takes it, except at the first
        step, where it is the prompt's last token."""
        if self.fed:
            self.matcher.consume_token(token)
        self.fed = True

    def eos_bitmask(self) -> np.ndarray:
        """A mask that allows only the end of the answer (for a matcher in error)."""
        bits = np.zeros(self.bitmask.size * 32, dtype=bool)
        bits[: self.vocab_size] = self.eos_only
        return np.packbits(bits, bitorder="little").view(np.int32)

    def _allowed(self, width: int) -> np.ndarray:
        started = time.perf_counter()
        if self.matcher.is_error():
            # Cannot happen with tokens sampled under the mask; if it does, end the answer
            # rather than sample from nothing.
            log.warning("grammar matcher error: %s", self.matcher.get_error())
            allowed = self.eos_only
        else:
            self.matcher.unsafe_compute_mask_ptr(self.bitmask.ctypes.data, self.bitmask.nbytes)
            allowed = np.unpackbits(self.bitmask.view(np.uint8), bitorder="little")[: self.vocab_size].astype(bool)
        if width > self.vocab_size:  # rows past the tokenizer's vocabulary are never allowed
            allowed = np.concatenate([allowed, np.zeros(width - self.vocab_size, dtype=bool)])
        self.mask_s += time.perf_counter() - started
        self.steps += 1
        return allowed[:width]

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

import functools
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
    """One constrained sequence: its matcher, fed the tokens the model consumes, and the
    mask of the next token as packed bits (llguidance's layout: bit i of word i // 32).

    The vision engine calls it as a logits processor (one sequence per forward pass); the
    text engine masks all its constrained rows in one step (worker_text/constrained.py) with
    `advance`, `fallback` and `mask_logits`. Either way the matcher takes the token the step
    feeds the model (waiting for the previous step's sampling: the one synchronisation a
    grammar needs) and the mask costs microseconds to a millisecond.
    """

    def __init__(self, matcher: llguidance.LLMatcher, vocab_size: int, eos_ids: list[int]):
        self.matcher = matcher
        self.vocab_size = vocab_size
        self.bitmask = np.zeros((1, words_for(vocab_size)), dtype=np.int32)
        eos = np.zeros(self.bitmask.size * 32, dtype=bool)
        eos[[i for i in eos_ids if 0 <= i < vocab_size]] = True
        self.eos_words = np.packbits(eos, bitorder="little").view(np.int32)
        """The mask that allows only the end of the answer (for a matcher in error)."""
        self.fed = False
        self.mask_s = 0.0
        """Seconds spent computing masks (bench/structured.py reports it per step)."""
        self.steps = 0

    def __call__(self, tokens: mx.array, logits: mx.array) -> mx.array:
        # No mx.async_eval(logits) here to start the forward pass early: measured on an H200
        # (7B shape, 8 rows) it cost 12% — each row's call evaluates its own slice.
        self.advance(cast(int, tokens[-1].item()))
        started = time.perf_counter()
        if not self.fallback(self.bitmask[0]):
            self.matcher.unsafe_compute_mask_ptr(self.bitmask.ctypes.data, self.bitmask.nbytes)
        self.mask_s += time.perf_counter() - started
        self.steps += 1
        return mask_logits(logits, self.bitmask, self.vocab_size)

    def advance(self, token: int) -> None:
        """The token the model is fed this step: the matcher takes it, except at the first
        step, where it is the prompt's last token."""
        if self.fed:
            self.matcher.consume_token(token)
        self.fed = True

    def fallback(self, words: np.ndarray) -> bool:
        """For a matcher in error (cannot happen with tokens sampled under the mask), write
        the end-only mask into `words` and say so: the answer ends rather than samples from
        nothing. False: the matcher computes the mask."""
        if not self.matcher.is_error():
            return False
        log.warning("grammar matcher error: %s", self.matcher.get_error())
        words[:] = self.eos_words
        return True


def words_for(vocab_size: int) -> int:
    return (vocab_size + 31) // 32


def mask_logits(logits: mx.array, words: np.ndarray, vocab_size: int) -> mx.array:
    """`logits` (rows, ..., width) where each row's packed mask (rows, words) allows, -inf
    elsewhere; ids past the tokenizer's vocabulary are never allowed."""
    width = logits.shape[-1]
    word, bit = _bit_positions(min(width, vocab_size))
    allowed = ((mx.array(words.view(np.uint32))[:, word] >> bit) & 1).astype(mx.bool_)
    if width > vocab_size:
        allowed = mx.concatenate([allowed, mx.zeros((words.shape[0], width - vocab_size), dtype=mx.bool_)], axis=-1)
    allowed = allowed.reshape(logits.shape[0], *([1] * (logits.ndim - 2)), width)
    return mx.where(allowed, logits, mx.array(-mx.inf, dtype=logits.dtype))


@functools.lru_cache(maxsize=8)
def _bit_positions(n: int) -> tuple[mx.array, mx.array]:
    """Each token id's word and bit in a packed mask: made once per width, not every step."""
    ids = np.arange(n)
    positions = mx.array(ids >> 5), mx.array((ids & 31).astype(np.uint32))
    mx.eval(*positions)
    return positions

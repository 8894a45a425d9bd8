"""Reasoning: the thinking a model writes before its answer, kept out of `content`.

Models that think open a block with a marker mlx-lm knows (`<think>`…`</think>`, and the other
pairs its tokenizer wrapper infers from the vocabulary) before answering; some chat templates
open it in the prompt already (the generation prompt ends with `<think>`). `ReasoningSplitter`
turns one sequence's text into `reasoning` (sent as `reasoning_content`) and `content`; only
a block at the very start of the answer is reasoning, so a marker quoted later in the answer
stays text. `ThinkingBudget` (an extension, `max_reasoning_tokens`) ends the block cleanly
after so many tokens by forcing the end marker's token.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

import mlx.core as mx

from mlx_common.tools import partial_suffix, with_answer


@dataclass(frozen=True)
class Thinking:
    """A model's thinking markers (None when it does not think)."""

    start: str
    end: str
    end_token: int | None
    """The end marker's token when it is one token (what a budget forces)."""
    start_token: int | None = None

    @classmethod
    def of(cls, tokenizer) -> Thinking | None:
        if not getattr(tokenizer, "has_thinking", False):
            return None
        starts, ends = list(tokenizer.think_start_tokens or ()), list(tokenizer.think_end_tokens or ())
        return cls(
            tokenizer.think_start,
            tokenizer.think_end,
            ends[0] if len(ends) == 1 else None,
            starts[0] if len(starts) == 1 else None,
        )

    def grammar(self, answer: str, inside: bool) -> str:
        """`answer` (a response_format's grammar) after a thinking block: free text up to the
        end marker (opened by the prompt when `inside`, else by the model or not at all),
        then the constrained answer. A marker of one token is matched as that token."""
        start = f"<[{self.start_token}]>" if self.start_token is not None else json.dumps(self.start)
        escaped = re.escape(self.end).replace("/", "\\/")
        rules = [
            f"THOUGHT: /(.|\\n)*/ & ~/(.|\\n)*{escaped}(.|\\n)*/",  # never the end marker as text
            # A token ends the text by itself; a marker of text ends it where it first appears.
            f"thought: THOUGHT <[{self.end_token}]>"
            if self.end_token is not None
            else f"thought[lazy]: THOUGHT {json.dumps(self.end)}",
            "GAP: /[ \\n]{0,4}/",
            "start: thought GAP @after_thought" if inside else f"start: ({start} thought GAP)? @after_thought",
        ]
        return with_answer("%llguidance {}\n" + "\n".join(rules) + "\n", answer, "after_thought")

    def opened_by(self, prompt_text: str) -> bool:
        """The prompt ends inside a thinking block (the template opened it)."""
        return prompt_text.rstrip().endswith(self.start)


class ReasoningSplitter:
    """Text in, (reasoning, content) out, for one sequence."""

    def __init__(self, thinking: Thinking, inside: bool):
        self.thinking = thinking
        self.state = "reasoning" if inside else "start"
        self.buffer = ""
        self.fresh = True
        """No reasoning text yet: newlines that open the block are dropped, however they arrive."""

    @property
    def reasoning(self) -> bool:
        return self.state == "reasoning"

    def feed(self, text: str, final: bool = False) -> tuple[str, str]:
        self.buffer += text
        reasoning = content = ""
        if self.state == "start":
            stripped = self.buffer.lstrip()
            if stripped.startswith(self.thinking.start):
                self.buffer, self.state = stripped[len(self.thinking.start) :], "reasoning"
            elif final or (stripped and not self.thinking.start.startswith(stripped)):
                self.state = "content"
            else:
                return "", ""  # whitespace, or the start of the marker: wait
        if self.state == "reasoning" and self.fresh:
            self.buffer = self.buffer.lstrip("\n")
            self.fresh = not self.buffer
        if self.state == "reasoning":
            at = self.buffer.find(self.thinking.end)
            if at < 0:
                keep = 0 if final else partial_suffix(self.buffer, self.thinking.end)
                reasoning, self.buffer = self.buffer[: len(self.buffer) - keep], self.buffer[len(self.buffer) - keep :]
                return reasoning, ""
            reasoning = self.buffer[:at]
            self.buffer, self.state = self.buffer[at + len(self.thinking.end) :], "gap"
        if self.state == "gap":  # the whitespace between the block and the answer is neither
            self.buffer = self.buffer.lstrip()
            if not self.buffer and not final:
                return reasoning, ""
            self.state = "content"
        content, self.buffer = self.buffer, ""
        return reasoning, content


class ThinkingBudget:
    """A logits processor: after `budget` tokens inside the thinking block, the only token
    allowed is the block's end (then the answer follows as usual)."""

    def __init__(self, start_token: int | None, end_token: int, budget: int, inside: bool):
        self.start_token, self.end_token, self.budget = start_token, end_token, budget
        self.inside, self.count, self.fed = inside, 0, False

    def __call__(self, tokens: mx.array, logits: mx.array) -> mx.array:
        if self.fed:
            token = tokens[-1].item()
            if token == self.start_token and self.count == 0:
                self.inside = True
            elif token == self.end_token:
                self.inside = False
            elif self.inside:
                self.count += 1
        self.fed = True
        if not self.inside or self.count < self.budget:
            return logits
        return _only(logits, self.end_token)


def _only(logits: mx.array, token: int) -> mx.array:
    keep = mx.arange(logits.shape[-1]) == token
    return mx.where(keep, logits, mx.array(-mx.inf, dtype=logits.dtype))

"""Requests an engine refuses at admission: the job ends with the exception's `code` and
message as its client's error (a 400), and the worker and the other jobs carry on. Shared
by every engine, so a refusal reads the same whichever kind of worker makes it."""

from __future__ import annotations


class RequestRejected(Exception):
    """This model cannot serve the request; `code`, `param` and the message go to the client."""

    code = "invalid_value"

    def __init__(self, message: str, *, param: str = "messages"):
        super().__init__(message)
        self.param = param


class PromptTooLong(RequestRejected):
    code = "context_length_exceeded"

    def __init__(self, prompt_tokens: int, context_length: int, counted: str = "the messages"):
        super().__init__(f"this model's context length is {context_length} tokens; {counted} take {prompt_tokens}")


def check_logit_bias(bias: dict[int, float], vocab_size: int) -> None:
    """Every biased token id must name a row of the model's output."""
    if bias and (max(bias) >= vocab_size or min(bias) < 0):
        raise RequestRejected(
            f"logit_bias names token ids outside this model's vocabulary (0 to {vocab_size - 1})", param="logit_bias"
        )

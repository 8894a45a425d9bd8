"""The real default model, end to end: SmolLM2-135M-Instruct imported from its GGUF by
`make test` (python -m worker_text.models install-default) and served by a real worker."""

from __future__ import annotations

import openai
import pytest

from .conftest import REAL_MODELS, SMOLLM2

pytestmark = pytest.mark.skipif(
    not (REAL_MODELS / SMOLLM2 / "config.json").exists(), reason="run `make models` first (make test does)"
)

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def smol(stack, api_url):
    proc = stack.start_worker(SMOLLM2)
    yield openai.OpenAI(base_url=api_url + "/v1", api_key="unused", max_retries=0, timeout=120)
    proc.stop()


def test_capital_of_france_streamed_and_not(smol):
    reply = smol.chat.completions.create(model=SMOLLM2, messages=QUESTION, temperature=0, max_tokens=24)
    text = reply.choices[0].message.content
    assert "Paris" in text
    chunks = list(
        smol.chat.completions.create(
            model=SMOLLM2,
            messages=QUESTION,
            temperature=0,
            max_tokens=24,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == text
    assert chunks[-1].usage.completion_tokens == reply.usage.completion_tokens
    assert chunks[-1].usage.prompt_tokens == reply.usage.prompt_tokens

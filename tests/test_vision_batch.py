"""Vision jobs decode in one batch (issue 16): four concurrent image chats through the stack run
at once — every first token arrives before any chat ends — and each answer equals its answer
alone at temperature 0, streamed and not."""

from __future__ import annotations

import json
import threading
import time

from .support import client_for
from .test_vision import data_uri, image_message, png, vision_worker  # noqa: F401  (the tiny vision worker)

MODEL = "tiny-vision"


def no_end(models_dir) -> dict[str, float]:
    """A logit bias that keeps the random model from ending early (its end-of-sequence ids)."""
    ids = json.loads((models_dir / MODEL / "generation_config.json").read_text())["eos_token_id"]
    return {str(i): -100 for i in (ids if isinstance(ids, list) else [ids])}


def chats() -> dict[str, list[dict]]:
    red, blue = data_uri(png((255, 0, 0))), data_uri(png((0, 0, 255), size=(48, 80)))
    return {
        "one": image_message(red),
        "two": image_message(red, blue, text="Compare them."),
        "none": [{"role": "user", "content": "Describe a red square."}],
        "other": image_message(blue, text="What colour is it? Answer at length."),
    }


def test_four_image_chats_run_in_one_batch_and_equal_their_answers_alone(api_url, vision_worker, models_dir):  # noqa: F811
    client = client_for(api_url)
    bias = no_end(models_dir)
    # Long enough (256 tokens, a few ms each) that all four are surely admitted while each runs.
    ask = dict(model=MODEL, max_tokens=256, temperature=0, logit_bias=bias)
    alone = {
        k: client.chat.completions.create(messages=m, **ask).choices[0].message.content for k, m in chats().items()
    }
    assert all(alone.values())

    firsts: dict[str, float] = {}
    ends: dict[str, float] = {}
    texts: dict[str, str] = {}

    def stream(key: str, messages: list[dict]) -> None:
        text = ""
        for chunk in client.chat.completions.create(messages=messages, stream=True, **ask):
            if chunk.choices and chunk.choices[0].delta.content:
                firsts.setdefault(key, time.monotonic())
                text += chunk.choices[0].delta.content
        ends[key] = time.monotonic()
        texts[key] = text

    threads = [threading.Thread(target=stream, args=item) for item in chats().items()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert texts == alone
    assert max(firsts.values()) < min(ends.values()), "a chat ended before another had started"

    # And not streamed, all at once.
    answers: dict[str, str] = {}

    def ask_once(key: str, messages: list[dict]) -> None:
        answers[key] = client.chat.completions.create(messages=messages, **ask).choices[0].message.content

    threads = [threading.Thread(target=ask_once, args=item) for item in chats().items()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert answers == alone

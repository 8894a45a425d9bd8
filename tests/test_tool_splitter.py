"""The tool-call splitter on each family's wire format, fed in every way a stream can cut it
(whole, one character at a time, and at seeded random points): the same content and calls
come out, and no markup reaches the content. The texts are the layouts the families' chat
templates teach (Qwen2.5's and Hermes' <tool_call> blocks, Mistral's [TOOL_CALLS] list),
with content before the calls, parallel calls, nested and unicode arguments; and Llama 3.x's
JSON calls, which have no marker: a call is the whole answer."""

from __future__ import annotations

import json
import random

import pytest

from mlx_common.tools import FORMATS, ToolCallSplitter, partial_suffix

QWEN_ONE = (
    "Let me check.\n<tool_call>\n"
    '{"name": "get_current_temperature", "arguments": {"location": "Paris, France", "unit": "celsius"}}\n</tool_call>'
)
QWEN_TWO = (
    '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Zürich", "days": [1, 2], "opts": {"a": "}"}}}\n'
    '</tool_call>\n<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call>'
)
MISTRAL_TWO = (
    '[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris", "note": "x\\"y"}}, '
    '{"name": "get_time", "arguments": {"zone": "cet"}}]'
)
PLAIN = "Just text, no call: 2 < 3 and <tool is not a tag."
CASES = [
    ("json_tools", PLAIN, PLAIN, []),
    ("json_tools", QWEN_ONE, "Let me check.\n",
     [("get_current_temperature", {"location": "Paris, France", "unit": "celsius"})]),
    ("json_tools", QWEN_TWO, "",
     [("get_weather", {"city": "Zürich", "days": [1, 2], "opts": {"a": "}"}}), ("get_time", {})]),
    ("mistral", MISTRAL_TWO, "", [("get_weather", {"city": "Paris", "note": 'x"y'}), ("get_time", {"zone": "cet"})]),
    ("llama3_json", '{"name": "get_weather", "parameters": {"city": "Paris", "days": [3]}}', "",
     [("get_weather", {"city": "Paris", "days": [3]})]),
    ("llama3_json", "No call here, only {braces} later.", "No call here, only {braces} later.", []),
]  # fmt: skip


def cuts(text: str) -> list[list[str]]:
    rng = random.Random(len(text))
    randomly = []
    for _ in range(5):
        points = sorted(rng.sample(range(1, len(text)), min(12, len(text) - 1)))
        randomly.append([text[a:b] for a, b in zip([0, *points], [*points, len(text)], strict=True)])
    return [[text], list(text), *randomly]


def split(family: str, pieces: list[str]) -> tuple[str, list[tuple[str, dict]], list[dict]]:
    splitter = ToolCallSplitter(FORMATS[family])
    content, calls, fragments = "", {}, []
    for i, piece in enumerate(pieces):
        out = splitter.feed(piece, final=i == len(pieces) - 1)
        content += out.content
        for fragment in out.calls:
            fragments.append(fragment)
            call = calls.setdefault(fragment["index"], ["", ""])
            call[0] += fragment.get("function", {}).get("name", "")
            call[1] += fragment["function"].get("arguments", "")
    return content, [(name, json.loads(args)) for name, args in (calls[i] for i in sorted(calls))], fragments


@pytest.mark.parametrize("family, text, content, calls", CASES)
def test_every_cut_of_the_stream_gives_the_same_content_and_calls(family, text, content, calls):
    for pieces in cuts(text):
        got_content, got_calls, fragments = split(family, pieces)
        assert (got_content, got_calls) == (content, calls), pieces
        firsts = [f for f in fragments if "id" in f]
        assert [f["index"] for f in firsts] == list(range(len(calls)))  # one header per call, in order
        assert all(f["type"] == "function" and f["function"]["arguments"] == "" for f in firsts)


def test_a_partial_marker_is_held_back_until_it_cannot_be_one():
    assert partial_suffix("text <tool_ca", "<tool_call>") == len("<tool_ca")
    assert partial_suffix("text <tool_cx", "<tool_call>") == 0
    splitter = ToolCallSplitter(FORMATS["json_tools"])
    assert splitter.feed("Hi <tool").content == "Hi "
    assert splitter.feed("box>").content == "<toolbox>"


def test_the_llama_grammar_allows_text_or_one_valid_call(models_dir):
    """Llama 3.x has no call marker: with `auto` an answer is text that does not open with `{`,
    or one call whose name is a tool's and whose parameters validate."""
    import llguidance
    import llguidance.hf
    from transformers import PreTrainedTokenizerFast

    from contract.payloads import Function

    city = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
            "additionalProperties": False}  # fmt: skip
    tools = [Function(name="get_weather", parameters=city)]
    tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(models_dir / "tiny-text" / "tokenizer.json"))
    vocabulary = llguidance.hf.from_tokenizer(tokenizer, n_vocab=len(tokenizer))
    grammar = FORMATS["llama3_json"].grammar(tools, "auto", True)

    def follows(text: str) -> bool:
        matcher = llguidance.LLMatcher(vocabulary, grammar, log_level=0)
        return all(matcher.consume_token(t) for t in tokenizer.encode(text)) and matcher.is_accepting()

    assert follows("Sunny, 21 C.") and follows('{"name": "get_weather", "parameters": {"city": "Paris"}}')
    assert not follows('{"name": "get_time", "parameters": {}}')  # no such tool
    assert not follows('{"name": "get_weather", "parameters": {"town": "Paris"}}')  # invalid parameters


@pytest.mark.parametrize("inside", [False, True])
def test_reasoning_splits_the_same_however_the_stream_is_cut(inside):
    from mlx_common.reasoning import ReasoningSplitter, Thinking

    thinking = Thinking("<think>", "</think>", end_token=None)
    text = ("" if inside else "\n<think>\n") + 'a </thi b\n</think>\n\n  {"x": 1}'
    for pieces in cuts(text):
        splitter, reasoning, content = ReasoningSplitter(thinking, inside), "", ""
        for i, piece in enumerate(pieces):
            r, c = splitter.feed(piece, final=i == len(pieces) - 1)
            reasoning, content = reasoning + r, content + c
        assert (reasoning, content) == ("a </thi b\n", '{"x": 1}'), pieces

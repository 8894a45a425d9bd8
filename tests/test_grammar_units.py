"""Composed grammars as units, on a real tokenizer (tiny-text's, where no marker is one token,
so every marker is matched as text): a thinking block before a constrained answer, and with
`tool_choice: auto` a response_format answer or calls."""

from __future__ import annotations

import json

import pytest

from api.structured import schema_grammar
from contract.payloads import Function
from mlx_common.reasoning import Thinking
from mlx_common.tools import FORMATS

YES_NO = schema_grammar({"enum": ["yes", "no"]})
ANSWER = {"type": "object", "properties": {"sunny": {"type": "boolean"}}, "required": ["sunny"],
          "additionalProperties": False}  # fmt: skip
CITY = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
        "additionalProperties": False}  # fmt: skip


@pytest.fixture(scope="module")
def follows(models_dir):
    import llguidance
    import llguidance.hf
    from transformers import PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(models_dir / "tiny-text" / "tokenizer.json"))
    vocabulary = llguidance.hf.from_tokenizer(tokenizer, n_vocab=len(tokenizer))

    def check(grammar: str, text: str) -> bool:
        matcher = llguidance.LLMatcher(vocabulary, grammar, log_level=0)
        assert not matcher.is_error(), matcher.get_error()
        return all(matcher.consume_token(t) for t in tokenizer.encode(text)) and matcher.is_accepting()

    return check


def test_a_thinking_block_then_the_answer(follows):
    thinking = Thinking("<think>", "</think>", end_token=None)
    opened_by_the_model = thinking.grammar(YES_NO, inside=False)
    assert follows(opened_by_the_model, '<think>yes, or no? {"a"}</think>\n\n"yes"')
    assert follows(opened_by_the_model, '"no"')  # not thinking at all is an answer too
    assert not follows(opened_by_the_model, "<think>hm</think>\nmaybe")
    assert not follows(opened_by_the_model, '<think>a</think> b</think>"no"')  # one block only
    opened_by_the_prompt = thinking.grammar(YES_NO, inside=True)
    assert follows(opened_by_the_prompt, 'hm</think>"no"')
    assert not follows(opened_by_the_prompt, '"no"')


def test_auto_with_a_response_format_is_that_answer_or_calls(follows):
    tools = [Function(name="get_weather", parameters=CITY)]
    grammar = FORMATS["json_tools"].grammar(tools, "auto", True, None, schema_grammar(ANSWER))
    call = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
    assert follows(grammar, json.dumps({"sunny": True}, separators=(",", ":")))
    assert follows(grammar, call) and follows(grammar, call + "\n" + call)
    assert not follows(grammar, "Sunny.") and not follows(grammar, '{"sunny":"yes"}')
    assert not follows(grammar, '{"sunny":true}' + call)  # an answer, or calls: not both
    mistral = FORMATS["mistral"].grammar(tools, "auto", True, None, schema_grammar(ANSWER))
    assert follows(mistral, '[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Oslo"}}]')
    assert follows(mistral, '{"sunny":false}')

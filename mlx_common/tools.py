"""Tool calls: each model family's wire format, the grammar that makes its calls valid, and
the splitter that turns generated text into content and OpenAI tool-call deltas.

A model calls tools in the format its chat template taught it; mlx-lm's tokenizer wrapper
names the family (`tool_parser_type`, inferred from the template) and its markers. Supported
here:

    json_tools   Qwen2.5, Qwen3, Hermes:  <tool_call>\\n{"name": "f", "arguments": {...}}\\n</tool_call>
    mistral      Mistral (v3 tokenizers): [TOOL_CALLS][{"name": "f", "arguments": {...}}, ...]
    llama3_json  Llama 3.1+ (ours; no marker): the whole answer is {"name": "f", "parameters": {...}}

Calls are generated under a grammar (mlx_common/grammar.py): with `tool_choice` `required`
or a named function the whole answer is calls; with `auto` the model writes text freely and,
once it writes the start marker, the call's name is one of the tools and its arguments
validate against that tool's parameters. So a call always parses, and the splitter can
stream it as it is generated: the name as soon as it is complete, then the arguments'
text as it comes.
"""

from __future__ import annotations

import json
import re
import secrets
from dataclasses import dataclass, field

from contract.payloads import ChatJob, ChatMessage, Function
from runtime.rejections import RequestRejected

JSON_STYLE = {"item_separator": ", ", "key_separator": ": ", "whitespace_flexible": False}
"""The JSON layout of calls as the templates show them: models follow their training."""


@dataclass(frozen=True)
class ToolFormat:
    family: str
    start: str
    """The text that opens a call (the trigger), or that opens the list of calls (mistral)."""
    end: str
    call_prefix: str = ""
    call_suffix: str = ""
    between: str = ""
    """Between two calls."""
    list_wrapped: bool = False
    """All calls in one JSON list after `start` (mistral)."""
    whole_answer: bool = False
    """No marker: a call is the whole answer, a JSON object starting with `start` (Llama 3.x)."""
    args_key: str = "arguments"

    def grammar(
        self,
        tools: list[Function],
        choice: str,
        parallel: bool,
        tokens: dict[str, int] | None = None,
        answer: str | None = None,
    ) -> str:
        """A Lark grammar (llguidance's dialect) for an answer under `choice`. `tokens`: the
        markers that are one added token of the model's vocabulary, by id (llguidance sees
        such a token as a token, never as its text). `answer`: the grammar of the request's
        `response_format`; with `auto` the answer is then either that or calls (OpenAI's
        rule: a final answer follows the format, a turn that calls tools is calls)."""

        def marker(text: str) -> str:
            return f"<[{tokens[text]}]>" if tokens and text in tokens else _lit(text)

        offered = [t for t in tools if choice in ("auto", "required") or t.name == choice]
        call = {"anyOf": [_call_schema(t, self.args_key) for t in offered], "x-guidance": JSON_STYLE}
        if self.whole_answer:  # one call, or (auto) text that does not open one
            if choice != "auto":
                return f"%llguidance {{}}\nstart: %json {json.dumps(call)}\n"
            return f"%llguidance {{}}\nstart: TEXT | %json {json.dumps(call)}\nTEXT: /(.|\\n)*/ & ~/\\s*\\{{(.|\\n)*/\n"
        if self.list_wrapped:
            listed = {"type": "array", "items": call, "minItems": 1, "x-guidance": JSON_STYLE}
            if not parallel:
                listed["maxItems"] = 1
            body, more, rules = f"%json {json.dumps(listed)}", "", []
        else:
            body = f"{_lit(self.call_prefix)} %json {json.dumps(call)} {_lit(self.call_suffix)} {marker(self.end)}"
            more = f" ({_lit(self.between)} call)*" if parallel else ""
            rules = [f"call: {marker(self.start)} {body}"]
        if choice == "auto" and answer is not None:
            calls = f"{marker(self.start)} {body}" if self.list_wrapped else f"call{more}"
            return with_answer("%llguidance {}\n" + "\n".join([*rules, f"start: @answer | {calls}"]) + "\n", answer)
        if choice == "auto":
            # Text that never holds the start marker as text (llguidance's regex negation);
            # once the marker comes, calls.
            text = "/(.|\\n)*/ & ~/(.|\\n)*" + re.escape(self.start).replace("/", "\\/") + "(.|\\n)*/"
            rules.append(f"TEXT: {text}")
            if tokens and self.start in tokens:  # a token: no text can be it, no lazy match needed
                rules.append(f"start: TEXT | TEXT? {marker(self.start)} {body}{more}")
            else:  # `lazy`: the text ends where the marker begins
                rules += [
                    f"start: TEXT | opened{more}",
                    f"opened: text_then_start {body}",
                    f"text_then_start[lazy]: TEXT {marker(self.start)}",
                ]
        else:
            rules.append(f"start: {marker(self.start)} {body}{more}")
        return "%llguidance {}\n" + "\n".join(rules) + "\n"


def with_answer(lark: str, answer: str, name: str = "answer") -> str:
    """`lark`, which refers to `@<name>`, with `answer` (a grammar as api/structured.py or
    this module makes it: llguidance's grammar list as JSON, or Lark text) as that grammar."""
    if answer.lstrip().startswith("{"):
        first, *others = json.loads(answer)["grammars"]
    else:
        first, others = {"lark_grammar": answer}, []
    return json.dumps({"grammars": [{"lark_grammar": lark}, {**first, "name": name}, *others]})


def _lit(text: str) -> str:
    return json.dumps(text) if text else ""


def _call_schema(tool: Function, args_key: str = "arguments") -> dict:
    return {
        "type": "object",
        "properties": {"name": {"const": tool.name}, args_key: tool.parameters},
        "required": ["name", args_key],
        "additionalProperties": False,
    }


FORMATS = {
    "json_tools": ToolFormat(
        "json_tools", "<tool_call>", "</tool_call>", call_prefix="\n", call_suffix="\n", between="\n"
    ),
    "mistral": ToolFormat("mistral", "[TOOL_CALLS]", "", list_wrapped=True),
    "llama3_json": ToolFormat("llama3_json", "{", "", whole_answer=True, args_key="parameters"),
}


def tool_format(tokenizer) -> ToolFormat | None:
    """The format of a model's calls (from mlx-lm's TokenizerWrapper), None when it has none we know."""
    family = getattr(tokenizer, "_tool_parser_type", None) or _family_of(tokenizer)
    return FORMATS.get(family or "")


def _family_of(tokenizer) -> str | None:
    template = getattr(tokenizer, "chat_template", None) or ""
    if not isinstance(template, str):
        return None
    if "[TOOL_CALLS]" in template:
        return "mistral"
    if "<tool_call>" in template and "tool_call.name" in template:
        return "json_tools"
    if "<|start_header_id|>" in template and '"parameters"' in template:
        return "llama3_json"  # Llama 3.1+'s JSON tool calling: {"name": ..., "parameters": ...}
    return None


def hidden_tokens(tokenizer, markers: set[int | None]) -> frozenset[int]:
    """Control tokens (`<|im_start|>`, `<|endoftext|>`: mlx-lm's wrapper's special ids), which
    never reach answer text — less `markers` (tool-call and thinking markers: the splitters
    read their text)."""
    return special_tokens(tokenizer._tokenizer) - markers


def special_tokens(tokenizer) -> frozenset[int]:
    """A Hugging Face tokenizer's control tokens: its special ids, and added tokens marked
    special (a chat template's `<|im_start|>` often is only the latter)."""
    added = getattr(tokenizer, "added_tokens_decoder", {})
    ids = {i for i, token in added.items() if getattr(token, "special", False)}
    return frozenset(ids | set(getattr(tokenizer, "all_special_ids", ())))


def marker_tokens(tokenizer, fmt: ToolFormat | None) -> dict[str, int]:
    """The format's markers that are single added tokens of `tokenizer` (mlx-lm's wrapper)."""
    if fmt is None:
        return {}
    added = set(getattr(tokenizer._tokenizer, "added_tokens_decoder", {}))
    found = {}
    for text in (fmt.start, fmt.end):
        ids = tokenizer.encode(text, add_special_tokens=False) if text else []
        if len(ids) == 1 and ids[0] in added:
            found[text] = ids[0]
    return found


def check_tools(fmt: ToolFormat | None, tools: list[Function], choice: str, answer: str | None = None) -> None:
    if tools and choice != "none" and fmt is None:
        raise RequestRejected(
            "this model's chat template has no tool-call format we know (Qwen/Hermes <tool_call>, Mistral "
            "[TOOL_CALLS]); use tool_choice none, or a model that calls tools",
            param="tools",
        )
    if fmt is not None and fmt.whole_answer and answer is not None and tools and choice == "auto":
        # Both a call and a JSON answer would be a bare JSON object: no one could tell them apart.
        raise RequestRejected(
            f"this model's calls ({fmt.family}) are bare JSON, like a response_format answer; with tools "
            "use tool_choice required or none, or drop response_format",
            param="response_format",
        )


def template_tools(job: ChatJob) -> list[dict] | None:
    """The tools as chat templates take them (None: the template renders no tool section)."""
    if not job.tools or job.tool_choice == "none":
        return None
    return [{"type": "function", "function": t.model_dump(exclude_none=True)} for t in job.tools]


def template_message(message: ChatMessage) -> dict:
    """A text message as chat templates take it: an assistant turn's calls with their
    arguments as objects (templates write them with `tojson`), a tool turn with its call id."""
    out: dict = {"role": message.role, "content": message.text}
    if message.tool_calls:
        out["tool_calls"] = [
            {
                "id": c.id,
                "type": "function",
                "function": {"name": c.function.name, "arguments": _arguments(c.function.arguments)},
            }
            for c in message.tool_calls
        ]
    if message.tool_call_id is not None:
        out["tool_call_id"] = message.tool_call_id
    return out


def _arguments(text: str):
    try:
        return json.loads(text)
    except ValueError:
        return text  # what the client sent, as it sent it


@dataclass
class Piece:
    """What one stretch of generated text is: content, or a tool-call delta."""

    content: str = ""
    calls: list[dict] = field(default_factory=list)
    """OpenAI tool-call deltas: {index, id, type, function: {name, arguments}} or {index, function: {arguments}}."""


class ToolCallSplitter:
    """Generated text in, content and tool-call deltas out, for one sequence.

    Outside calls, text is content — except a tail that may be the start of the start
    marker, held back until it cannot be. Calls are generated under the grammar, so in the
    layout `ToolFormat` describes: the name is sent once complete, then the arguments as they
    come (all but a last character that may close them), then the call's closing text is
    dropped, and another call may follow."""

    def __init__(self, fmt: ToolFormat):
        self.fmt = fmt
        self.name = re.compile(r'\s*\{"name": "([^"]+)", "' + re.escape(fmt.args_key) + '": ')
        self.state = "text"
        self.buffer = ""
        self.args = ""
        self.sent = 0
        self.tail = ""
        self.index = -1

    @property
    def called(self) -> bool:
        return self.index >= 0

    def feed(self, text: str, final: bool = False) -> Piece:
        self.buffer += text
        piece = Piece()
        while getattr(self, "_" + self.state)(piece, final):
            pass
        if final and self.state in ("text", "between") and self.buffer.strip():
            piece.content += self.buffer  # cannot happen under the grammar; never lose text
            self.buffer = ""
        return piece

    # Each state handler consumes what it can; True when the state changed and more may follow.

    def _text(self, piece: Piece, final: bool) -> bool:
        if self.fmt.whole_answer:  # a call only as the whole answer: decided by its first character
            stripped = self.buffer.lstrip()
            if not stripped and not final:
                return False
            self.state = "head" if stripped.startswith(self.fmt.start) else "plain"
            self.buffer = stripped if self.state == "head" else self.buffer
            return True
        at = self.buffer.find(self.fmt.start)
        if at < 0:
            keep = 0 if final else partial_suffix(self.buffer, self.fmt.start)
            piece.content += self.buffer[: len(self.buffer) - keep]
            self.buffer = self.buffer[len(self.buffer) - keep :]
            return False
        piece.content += self.buffer[:at]
        self.buffer = self.buffer[at + len(self.fmt.start) :]
        if self.fmt.list_wrapped:
            self.state = "open_list"
        else:
            self.state = "head"
        return True

    def _plain(self, piece: Piece, final: bool) -> bool:
        piece.content, self.buffer = piece.content + self.buffer, ""
        return False

    def _open_list(self, piece: Piece, final: bool) -> bool:
        stripped = self.buffer.lstrip()
        if not stripped:
            return False
        self.buffer = stripped.removeprefix("[")
        self.state = "head"
        return True

    def _head(self, piece: Piece, final: bool) -> bool:
        match = self.name.match(self.buffer)
        if match is None:
            return False
        self.index += 1
        piece.calls.append({"index": self.index, "id": "call_" + secrets.token_hex(12), "type": "function",
                            "function": {"name": match.group(1), "arguments": ""}})  # fmt: skip
        self.buffer, self.args, self.sent = self.buffer[match.end() :], "", 0
        self.state = "arguments"
        return True

    def _arguments(self, piece: Piece, final: bool) -> bool:
        self.args += self.buffer
        self.buffer = ""
        end = _json_end(self.args)
        upto = end if end is not None else max(self.sent, len(self.args) - 1)
        if upto > self.sent:
            piece.calls.append({"index": self.index, "function": {"arguments": self.args[self.sent : upto]}})
            self.sent = upto
        if end is None:
            return False
        self.buffer = self.args[end:]
        self.tail = "}" + (
            "" if self.fmt.list_wrapped or self.fmt.whole_answer else self.fmt.call_suffix + self.fmt.end
        )
        self.state = "closing"
        return True

    def _closing(self, piece: Piece, final: bool) -> bool:
        while self.buffer and self.tail:
            if self.buffer[0] == self.tail[0]:
                self.tail = self.tail[1:]
            elif not self.buffer[0].isspace():
                break
            self.buffer = self.buffer[1:]
        if self.tail and not self.buffer[:1].strip():
            return False
        self.state = "between"
        return True

    def _between(self, piece: Piece, final: bool) -> bool:
        if self.fmt.whole_answer:  # the call was the answer
            return False
        rest = self.buffer.lstrip()
        if self.fmt.list_wrapped:
            if rest.startswith(","):
                self.buffer, self.state = rest[1:].lstrip(), "head"
                return True
            if rest.startswith("]"):
                self.buffer, self.state = rest[1:], "text"
                return True
            return False
        if rest.startswith(self.fmt.start):
            self.buffer, self.state = rest[len(self.fmt.start) :], "head"
            return True
        return False


def _json_end(text: str) -> int | None:
    """Where the JSON value at the start of `text` ends, or None while it is incomplete."""
    try:
        _, end = json.JSONDecoder().raw_decode(text)
    except json.JSONDecodeError:
        return None
    if end == len(text) and text and text[-1] in "0123456789":
        return None  # a number may go on
    return end


def partial_suffix(text: str, marker: str) -> int:
    """Length of the longest tail of `text` that is a proper prefix of `marker`."""
    for n in range(min(len(marker) - 1, len(text)), 0, -1):
        if marker.startswith(text[-n:]):
            return n
    return 0

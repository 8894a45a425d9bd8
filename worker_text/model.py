"""A loaded text model and how a chat becomes its prompt (the chat template, its tools and
options), shared by the engine and the loader."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from contract.payloads import ChatJob
from mlx_common.tools import template_message, template_tools


@dataclass
class TextModel:
    model_id: str
    model: Any
    """mlx-lm's model (an nn.Module)."""
    tokenizer: Any
    """mlx-lm's TokenizerWrapper."""
    context_length: int
    vocab_size: int
    path: Path | None = None
    """The model's directory (what the disk prompt cache's key is made of); None: built in memory."""
    dequantized: bool = False
    """Its quantized weights were made float32 for the CPU (worker_text/cpu_weights.py): its KV
    cache is float32 too, so prompt caches saved by the quantized model are not its own."""

    def encode_chat(self, job: ChatJob, **template_options) -> list[int]:
        return self.encode(self.render_chat(job, **template_options))

    def encode(self, prompt_text: str) -> list[int]:
        # A template writes its own special tokens; plain text gets the tokenizer's (a BOS).
        return self.tokenizer.encode(prompt_text, add_special_tokens=not getattr(self.tokenizer, "chat_template", None))

    def render_chat(self, job: ChatJob, **template_options) -> str:
        """The prompt as text: the chat template with the request's tools and options (an
        `enable_thinking` switch, `reasoning_effort`), which templates that know them read."""
        # A text model sees text only (the API never routes images to one).
        messages = [template_message(m) for m in job.messages]
        if getattr(self.tokenizer, "chat_template", None):
            tools = template_tools(job)
            options = {k: v for k, v in template_options.items() if v is not None}
            return self.tokenizer.apply_chat_template(
                messages, tools=tools, add_generation_prompt=True, tokenize=False, **options
            )
        # No template: plain "role: content" lines, as mlx_lm.server does.
        return "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant: "

"""Text generation over mlx-lm: chat templating, sampling, stop sequences, logprobs.

No Redis here: `TextEngine` turns admitted `ChatJob`s into stream events, one engine step
at a time, for the engine thread (runtime/engine_loop.py) to send. Text is only released once it
can no longer turn out to be the start of a stop sequence, so a stop string never reaches
the client, even split across tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import mlx.core as mx
from mlx_lm.generate import BatchGenerator, make_stop_sequences
from mlx_lm.sample_utils import make_logits_processors
from mlx_lm.tokenizer_utils import StreamingDetokenizer

from contract.payloads import ChatJob, CompletionTokensDetails, PromptTokensDetails, Usage
from contract.stream import EventType
from mlx_common.cpu_blas import cpu_status, on_cpu
from mlx_common.grammar import Grammars
from mlx_common.logprobs import token_logprob
from mlx_common.prefill import default_prefill_chunk
from mlx_common.reasoning import ReasoningSplitter, Thinking, ThinkingBudget
from mlx_common.tools import (
    ToolCallSplitter,
    check_tools,
    hidden_tokens,
    marker_tokens,
    tool_format,
)
from runtime.rejections import PromptTooLong, RequestRejected, check_logit_bias
from runtime.steps import StepEvent
from runtime.stops import StopMatcher, done_data

from . import batch_cache
from .constrained import install, rows_of
from .disk_cache import DiskPromptCache
from .kv_quant import make_quantized_cache
from .memory import KVBudget
from .model import TextModel
from .prompt_caches import PromptCaches, common_prefix
from .samplers import SamplerCache
from .shared_prefill import SharedPrefill, from_shared


@dataclass
class _Sequence:
    """One job in the batch."""

    job_id: str
    uid: int
    request: ChatJob
    prompt: list[int]
    prompt_tokens: int
    cached_tokens: int
    stops: StopMatcher
    detokenizer: StreamingDetokenizer
    calls: ToolCallSplitter | None = None
    """Splits tool calls off the text when the request offers tools."""
    reasoning: ReasoningSplitter | None = None
    """Splits the thinking block off the text when the model thinks."""
    tokens: int = 0
    reasoning_tokens: int = 0


class TextEngine:
    """The text worker's engine (runtime.engine_loop.Engine) over mlx-lm's `BatchGenerator`.

    Each job brings its own sampler, logits processors, stop strings and token limit.
    Prompts reuse the KV cache of their longest known prefix, in RAM or on disk
    (worker_text/prompt_caches.py): a conversation's next turn prefills only its new tokens.
    Only the engine thread may call it: MLX work stays on the stream of that thread.
    """

    def __init__(
        self,
        text_model: TextModel,
        capacity: int,
        prompt_cache_bytes: int,
        prefill_chunk: int = 0,
        budget: KVBudget | None = None,
        kv_quantization: tuple[int, int] | None = None,
        disk: DiskPromptCache | None = None,
    ):
        self.text_model = text_model
        self.kv_quantization = kv_quantization
        """(bits, group size) of the KV cache (KV_BITS), or None: the model's float type."""
        self.budget = budget
        """Memory-aware admission (worker_text/memory.py); None: unbounded (tests of other parts)."""
        self.capacity = capacity
        self.cpu = cpu_status(text_model.dequantized) if on_cpu() else {}
        """On a CPU: which BLAS MLX runs on and whether the weights are float32 (mlx_common/cpu_blas.py)."""
        self.caches = PromptCaches(text_model.model_id, prompt_cache_bytes, disk, kv_quantization is not None)
        self.prefill_chunk = prefill_chunk or default_prefill_chunk()
        self.eos_stops = make_stop_sequences(text_model.tokenizer)
        tokenizer = text_model.tokenizer
        self.grammars = Grammars(tokenizer._tokenizer, text_model.vocab_size, sorted(tokenizer.eos_token_ids))
        self.tool_format = tool_format(tokenizer)
        self.tool_markers = marker_tokens(tokenizer, self.tool_format)
        self.thinking = Thinking.of(tokenizer)
        thinking_markers = (self.thinking.start_token, self.thinking.end_token) if self.thinking else ()
        self.hidden = hidden_tokens(tokenizer, {*self.tool_markers.values(), *thinking_markers})
        install()  # its batches mask constrained rows together (worker_text/constrained.py)
        batch_cache.install()  # no attention mask on decode steps of unpadded batches
        self.constrained = rows_of(text_model.model)
        self.samplers = SamplerCache()
        self.sequences: dict[int, _Sequence] = {}
        self.uid_of: dict[str, int] = {}
        self.shared = SharedPrefill()
        self._generator: BatchGenerator | None = None

    @property
    def context_length(self) -> int:
        """Published in the worker registry: the API caps max_tokens with it."""
        return self.text_model.context_length

    @property
    def generator(self) -> BatchGenerator:
        # Made on first use, in the engine thread, on that thread's default stream.
        if self._generator is None:
            self._generator = BatchGenerator(
                self.text_model.model,
                stream=mx.default_stream(mx.default_device()),
                # Interactive jobs may join while batch work fills every slot (runtime/batching.py).
                completion_batch_size=2 * self.capacity,
                prefill_batch_size=self.capacity,
                # Each next() decodes one token for every generating job, then prefills at most
                # this many tokens of each waiting prompt: a long prompt costs the others one
                # chunk per step, never its whole prefill (PREFILL_CHUNK).
                prefill_step_size=self.prefill_chunk,
            )
        return self._generator

    def add(self, job_id: str, request: ChatJob) -> dict:
        model = self.text_model
        calling = bool(request.tools) and request.tool_choice != "none"
        check_tools(self.tool_format, request.tools, request.tool_choice, request.grammar)
        grammar = request.grammar
        if calling and self.tool_format is not None:
            grammar = self.tool_format.grammar(
                request.tools, request.tool_choice, request.parallel_tool_calls, self.tool_markers, request.grammar
            )
        thinking = self.thinking
        start: dict = {}
        if request.prompt is not None:  # legacy completions: the prompt as it is, no thinking
            text, prompt, thinking = "", self._raw_prompt(request.prompt), None
            if isinstance(request.prompt, list):  # what `echo` shows of a prompt of token ids
                start["prompt_text"] = model.tokenizer.decode(prompt)
        else:
            text = model.render_chat(
                request, enable_thinking=request.enable_thinking, reasoning_effort=request.reasoning_effort
            )
            prompt = model.encode(text)
        if request.count_only:  # counted, never generated: the engine loop ends the job
            return {"prompt_tokens": len(prompt), "cached_tokens": 0, "count_only": True}
        if len(prompt) >= model.context_length:
            raise PromptTooLong(len(prompt), model.context_length)
        params = request.sampling.normalized(model.vocab_size)
        check_logit_bias(params.logit_bias, model.vocab_size)
        processors = make_logits_processors(
            logit_bias=params.logit_bias or None,
            repetition_penalty=params.repetition_penalty,
            presence_penalty=params.presence_penalty or None,
            frequency_penalty=params.frequency_penalty or None,
        )
        inside = thinking is not None and thinking.opened_by(text)
        thinks = request.enable_thinking is not False and request.reasoning_effort != "none"
        if grammar and thinking is not None and thinks:  # free thinking first, then the constrained answer
            grammar = thinking.grammar(grammar, inside)
        if request.max_reasoning_tokens is not None and thinking is not None:
            processors.append(self._budget(thinking, request.max_reasoning_tokens, inside))
        # Checked before the insert (a grammar this vocabulary cannot follow is refused);
        # applied to the batch's logits right after the forward pass, before any processor.
        constraint = self.grammars.processor(grammar) if grammar else None

        def insert(shared: list | None) -> int:
            """Into the batch: from the prompt cache's longest prefix, or from `shared`, the
            KV cache of this very prompt that a leader just prefilled (worker_text/shared_prefill.py)."""
            cache, rest = self.caches.fetch(prompt) if shared is None else from_shared(shared, prompt)
            cached = len(prompt) - len(rest)
            if cache is None and self.kv_quantization is not None:  # every sequence's: batches merge by type
                cache = make_quantized_cache(model.model, *self.kv_quantization)
            (uid,) = self.generator.insert(
                [rest],
                max_tokens=[min(request.max_tokens, model.context_length - len(prompt))],
                caches=[cache],  # type: ignore[list-item]  # None (no cache) is fine; mlx-lm's hint lacks it
                all_tokens=[prompt[:cached]],
                samplers=[self.samplers.get(params)],
                logits_processors=[processors],
                stop_sequences=[self.eos_stops],
            )
            self.sequences[uid] = _Sequence(
                job_id, uid, request, prompt, len(prompt), cached, StopMatcher(request.stop),
                model.tokenizer.detokenizer,
                calls=ToolCallSplitter(self.tool_format) if calling and self.tool_format else None,
                reasoning=ReasoningSplitter(thinking, inside) if thinking is not None else None,
            )  # fmt: skip
            self.uid_of[job_id] = uid
            if constraint is not None:
                self.constrained[uid] = constraint
            return uid

        cached = [0]

        def begin() -> None:
            leader = self.shared.leader_of(prompt)
            if leader is not None:  # the same prompt is being prefilled: wait for it, not prefill it again
                self.shared.follow(leader, job_id, insert)
                cached[0] = len(prompt) - 1
                return
            uid = insert(None)
            self.shared.lead(uid, prompt)
            cached[0] = self.sequences[uid].cached_tokens

        if self.budget is None:
            begin()
        else:  # it starts when its KV fits beside the batch's (worker_text/memory.py)
            need = self.budget.check(len(prompt), min(request.max_tokens, model.context_length - len(prompt)))
            self.budget.start(job_id, need, begin)
        return {"prompt_tokens": len(prompt), "cached_tokens": cached[0], **start}

    def _raw_prompt(self, prompt: str | list[int]) -> list[int]:
        if isinstance(prompt, str):
            return self.text_model.tokenizer.encode(prompt, add_special_tokens=True)
        vocab = self.text_model.vocab_size
        if any(t >= vocab for t in prompt):
            raise RequestRejected(
                f"prompt token ids must be below this model's vocabulary size ({vocab})", param="prompt"
            )
        return list(prompt)

    def _budget(self, thinking: Thinking, budget: int, inside: bool) -> ThinkingBudget:
        if thinking.end_token is None:
            raise RequestRejected(
                "this model ends its thinking with several tokens; max_reasoning_tokens cannot end it",
                param="max_reasoning_tokens",
            )
        start = self.text_model.tokenizer.encode(thinking.start, add_special_tokens=False)
        return ThinkingBudget(start[0] if len(start) == 1 else None, thinking.end_token, budget, inside)

    @property
    def holding(self) -> bool:
        """Jobs wait for memory: the admission loop takes no more (runtime/engine_loop.py)."""
        return self.budget is not None and self.budget.holding

    def memory_status(self) -> dict:
        """KV memory figures for the registry (`/admin/status`)."""
        bits = {"kv_bits": self.kv_quantization[0] if self.kv_quantization else None, **self.cpu}
        return {**self.budget.status(), **bits} if self.budget is not None else bits

    def step(self) -> tuple[list[StepEvent], dict[str, dict]]:
        if self.budget is not None:
            self.budget.admit_waiting()
        prompts, responses = self.generator.next()
        for prompt in prompts:
            if prompt.end_of_prompt:
                self._start_followers(prompt.uid)
                self._save_prefilled(prompt.uid)
        events: list[StepEvent] = []
        finished: dict[str, dict] = {}
        for response in responses:
            seq = self.sequences.get(response.uid)
            if seq is None:
                continue
            seq.tokens += 1
            text, finish = self._text(seq, response)
            reasoning = ""
            if seq.reasoning is not None:
                seq.reasoning_tokens += seq.reasoning.reasoning
                reasoning, text = seq.reasoning.feed(text, final=finish is not None)
            calls: list[dict] = []
            if seq.calls is not None:
                piece = seq.calls.feed(text, final=finish is not None)
                text, calls = piece.content, piece.calls
                if finish == "stop" and seq.calls.called:
                    finish = "tool_calls"
            logprob = (
                token_logprob(self.text_model.tokenizer, response.logprobs, response.token, seq.request.top_logprobs)
                if seq.request.logprobs
                else None
            )
            if text or calls or reasoning or logprob is not None:
                extra: dict[str, Any] = {"logprobs": [logprob.model_dump()]} if logprob is not None else {}
                if calls:
                    extra["tool_calls"] = calls
                if reasoning:
                    extra["reasoning"] = reasoning
                events.append((seq.job_id, EventType.DELTA, {"text": text, **extra}))
            if finish is not None:
                usage = self._finish(seq, response)
                events.append((seq.job_id, EventType.DONE, done_data(finish, usage, seq.stops)))
                finished[seq.job_id] = usage
        return events, finished

    def _start_followers(self, uid: int) -> None:
        """A leader's prompt is prefilled: the jobs waiting for it start from its cache."""
        followers = self.shared.prefilled(uid)
        if not followers:
            return
        cache = self.generator.extract_cache([uid]).get(uid, (None, None))[0] if uid in self.sequences else None
        for follower in followers:
            follower.insert(cache)

    def _save_prefilled(self, uid: int) -> None:
        """A prompt's prefill ended: its cache to disk (and the part before its last message)."""
        seq = self.sequences.get(uid)
        if seq is None or not self.caches.wants(seq.prompt):
            return
        cache = self.generator.extract_cache([uid]).get(uid, (None, None))[0]
        if cache is not None:
            self.caches.prefilled(seq.prompt, cache, lambda: self._before_last_message(seq))

    def _before_last_message(self, seq: _Sequence) -> int:
        """Tokens of the prompt before its last message: where a shared system prompt ends."""
        messages = seq.request.messages
        if seq.request.prompt is not None or len(messages) < 2:
            return 0
        earlier = self.text_model.encode(
            self.text_model.render_chat(seq.request.model_copy(update={"messages": messages[:-1]}))
        )
        return common_prefix(earlier, seq.prompt)

    def remove(self, job_ids: list[str]) -> dict[str, int]:
        waiting = {j: 0 for j in job_ids if self.shared.drop(j)}  # never started: no tokens
        if self.budget is not None:  # jobs still waiting for memory never started either
            waiting |= {j: 0 for j in job_ids if self.budget.release(j)}
        uids = [self.uid_of[j] for j in job_ids if j in self.uid_of]
        if uids:
            self.generator.remove(uids)
        tokens = waiting
        for uid in uids:
            seq = self._forget(uid)
            tokens[seq.job_id] = seq.tokens
        return tokens

    def _text(self, seq: _Sequence, response) -> tuple[str, str | None]:
        """The text this token releases and the job's finish reason, if it ends here."""
        detokenizer = seq.detokenizer
        # An end-of-sequence token is never text, nor is any other control token.
        if response.finish_reason != "stop" and response.token not in self.hidden:
            detokenizer.add_token(response.token)
        if response.finish_reason is not None:
            detokenizer.finalize()
        text, stopped = seq.stops.feed(detokenizer.last_segment)
        if stopped:
            return text, "stop"
        if response.finish_reason is not None:
            return text + seq.stops.flush(), response.finish_reason
        return text, None

    def _finish(self, seq: _Sequence, response) -> dict:
        if response.finish_reason is None:  # a stop string: the generator still runs it
            caches = self.generator.remove([seq.uid], return_prompt_caches=True)
            cache, tokens = caches.get(seq.uid, (None, None))
        else:
            cache, tokens = response.prompt_cache, response.all_tokens
        if cache is not None and tokens:
            self.caches.keep(list(tokens), cache)
        self._forget(seq.uid)
        return Usage(
            prompt_tokens=seq.prompt_tokens,
            completion_tokens=seq.tokens,
            total_tokens=seq.prompt_tokens + seq.tokens,
            prompt_tokens_details=PromptTokensDetails(cached_tokens=seq.cached_tokens),
            completion_tokens_details=(
                CompletionTokensDetails(reasoning_tokens=seq.reasoning_tokens) if seq.reasoning is not None else None
            ),
        ).model_dump(exclude_none=True)

    def _forget(self, uid: int) -> _Sequence:
        self.constrained.pop(uid, None)
        seq = self.sequences.pop(uid)
        del self.uid_of[seq.job_id]
        if self.budget is not None:
            self.budget.release(seq.job_id)
        for follower in self.shared.prefilled(uid):  # it went before its prompt was done
            follower.insert(None)
        return seq

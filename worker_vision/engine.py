"""Chat over text and images with mlx-vlm: prompts, sampling, stop strings, logprobs.

No Redis here: `VisionEngine` turns admitted `VisionRequest`s into stream events, one engine
step at a time, for the engine thread (runtime/engine_loop.py) to send.

Two phases per job, as mlx-vlm's own BatchGenerator has them. **Prefill**: the job's images
are encoded and its prompt read into KV caches of its own, about `prefill_chunk` tokens a step
(PREFILL_CHUNK) across the waiting jobs, the shortest prompt first — a 20k-token document page
never holds the running streams for more than a chunk, and a chat's prompt goes before it; each
job's pieces are mlx-vlm's `generate_step` split (all but the last token in chunks, then the
last), so its numbers never depend on what else waits. **Decode**: when its first token is
sampled the job's caches join a `DecodeBatch` (worker_vision/batch.py) as one more row, and one
forward pass per step gives every decoding job its next token's logits; sampling, penalties,
grammars, stops and logprobs stay per job, on its row. mlx-vlm's `stream_generate` cannot be
shared by jobs: Qwen-VL language models keep the current sequence's mRoPE offsets on the
shared model object, and it hangs per-request state on the shared tokenizer. So the engine
drives the model itself, passing Qwen-VL rows their positions on every call; nothing a job
needs lives on the model between calls. A job's greedy output is the same alone or in a
batch, and the same as `generate_step`'s (tests/test_vision_engine.py, test_vision_families.py).
A failure while a job's images are prepared (`add()`) ends that job alone.

Text is only released once it can no longer turn out to be the start of a stop string
(runtime/stops.py), so a stop string never reaches the client, even split across tokens.

MLX streams: the engine is created in the main thread, but all its MLX work runs in the
engine thread, on that thread's default stream. mlx-vlm's module-level `generation_stream`
(made at import, thread-local) is never used here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

import mlx.core as mx
from mlx_vlm.models.cache import make_prompt_cache
from mlx_vlm.sample_utils import apply_min_p, apply_top_k, apply_top_p, make_logits_processors, make_sampler

from contract.payloads import ChatJob, PromptTokensDetails, SamplingParams, TokenLogprob, Usage
from contract.stream import EventType
from mlx_common.grammar import Grammars
from mlx_common.logprobs import token_logprob
from mlx_common.prefill import default_prefill_chunk
from mlx_common.sampling import Filters, SeededSampler
from runtime.rejections import PromptTooLong, RequestRejected, check_logit_bias
from runtime.steps import StepEvent
from runtime.stops import StopMatcher, done_data

from .batch import DecodeBatch
from .jobs import VisionRequest
from .loading import VisionModel
from .prompts import Prompt, encode
from .text_stream import TextStream

MAX_IMAGES = 8
"""Images per request unless told otherwise (the worker passes MAX_IMAGES from Settings, the
limit the API applies): the vision tower encodes all of them in one engine step."""
PENALTY_CONTEXT = 20
"""Recent tokens that repetition/presence/frequency penalties look at (mlx-vlm's default)."""
FILTERS = Filters(apply_top_p, apply_min_p, apply_top_k)
"""mlx-vlm's logit filters, for seeded samplers (mlx_common.sampling)."""


@dataclass
class _Unread:
    """What the language model has still to read of a job's prompt."""

    ids: mx.array
    embeds: mx.array
    extra: dict
    """What the vision tower handed the language model besides the embeddings, for every
    prefill call (Qwen-VL: the whole prompt's positions, which it slices at the cache offset)."""

    @property
    def length(self) -> int:
        return self.ids.shape[1]


@dataclass
class _Sequence:
    """One running job: its cache, its positions and its decoding state."""

    job_id: str
    request: ChatJob
    prompt_tokens: int
    max_tokens: int
    cache: list
    """Its KV caches while it prefills; then they are a row of the engine's DecodeBatch."""
    sampler: Callable[[mx.array], mx.array] | None
    processors: list
    stops: StopMatcher
    text: TextStream
    history: mx.array
    """The last PENALTY_CONTEXT ids (prompt, then generated), for the penalties."""
    unread: Prompt | _Unread | None
    """The prompt still to read: its images not yet encoded (a Prompt), then its embeddings;
    None once the first token is being sampled."""
    rope_delta: int = 0
    """mRoPE: a token at cache offset n sits at position n + rope_delta (images are compact)."""
    pending: mx.array | None = None
    """The sampled next token, computing asynchronously until the next step reads it."""
    pending_logprobs: mx.array | None = None
    tokens: int = 0


class VisionEngine:
    """The vision worker's engine (runtime.engine_loop.Engine) over mlx-vlm models.
    Only the engine thread may call it."""

    def __init__(
        self, vision_model: VisionModel, max_images: int = MAX_IMAGES, prefill_chunk: int = 0, batched: bool = True
    ):
        self.vm = vision_model
        self.max_images = max_images
        self.prefill_chunk = prefill_chunk or default_prefill_chunk()
        self.sequences: dict[str, _Sequence] = {}
        self.batched = batched
        """One forward pass per step for all decoding jobs; False: one per job (VISION_BATCH=0,
        the engine before batching, kept to measure against: bench/vision.py)."""
        self.batches: list[DecodeBatch] = []
        self._vocab_mask: mx.array | None = None
        tokenizer = getattr(vision_model.processor, "tokenizer", vision_model.processor)
        self.grammars = Grammars(tokenizer, vision_model.vocab_size, sorted(vision_model.eos_token_ids))

    @property
    def context_length(self) -> int:
        """Published in the worker registry: the API caps max_tokens with it."""
        return self.vm.context_length

    def add(self, job_id: str, request: VisionRequest) -> dict:
        job = request.job
        self._check(request)
        prompt = self._encode(request)
        if job.count_only:  # counted, never generated (the vision tower never runs): the loop ends it
            return {"prompt_tokens": prompt.length, "cached_tokens": 0, "count_only": True}
        context = self.vm.context_length
        if prompt.length >= context:
            raise PromptTooLong(prompt.length, context, counted="the messages (images included)")
        max_tokens = min(job.max_tokens, context - prompt.length)
        grammar = [self.grammars.processor(job.grammar)] if job.grammar else []  # refused before the prefill
        self.sequences[job_id] = self._start(job_id, job, prompt, max_tokens, grammar)
        return {"prompt_tokens": prompt.length, "cached_tokens": 0}

    def step(self) -> tuple[list[StepEvent], dict[str, dict]]:
        events: list[StepEvent] = []
        finished: dict[str, dict] = {}
        for job_id in [j for batch in self.batches for j in batch.rows]:
            seq = self.sequences[job_id]
            finish = self._emit(seq, events)
            if finish is None:
                continue
            usage = self._usage(seq)
            events.append((seq.job_id, EventType.DONE, done_data(finish, usage, seq.stops)))
            finished[seq.job_id] = usage
            del self.sequences[seq.job_id]
        self._leave(set(finished))
        for batch in self.batches:  # every job's next token computes while the step's events are sent
            self._decode(batch)
        self._prefill_step()
        return events, finished

    def remove(self, job_ids: list[str]) -> dict[str, int]:
        self._leave(set(job_ids))
        return {j: self.sequences.pop(j).tokens for j in job_ids if j in self.sequences}

    def _leave(self, job_ids: set[str]) -> None:
        for batch in self.batches:
            batch.leave(job_ids)
        self.batches = [batch for batch in self.batches if batch]

    # --- admission ---

    def _check(self, request: VisionRequest) -> None:
        job, vm = request.job, self.vm
        if len(request.images) > self.max_images:
            raise RequestRejected(f"at most {self.max_images} images per request; this one has {len(request.images)}")
        if any(m.images and m.role != "user" for m in job.messages):
            raise RequestRejected("images are accepted in user messages only")
        check_logit_bias(job.sampling.logit_bias, vm.vocab_size)
        if job.tools and job.tool_choice != "none":  # refused, never ignored (docs/STRUCTURED.md)
            raise RequestRejected("tool calls are not supported on vision models yet", param="tools")

    def _encode(self, request: VisionRequest) -> Prompt:
        return encode(self.vm, request.job.messages, request.images)

    def _start(self, job_id: str, job: ChatJob, prompt: Prompt, max_tokens: int, grammar: list) -> _Sequence:
        """Queue the prompt: its images are encoded, then it is read a chunk a step, when its
        turn comes; its first token is sampled when the last chunk has been read."""
        return _Sequence(
            job_id=job_id,
            request=job,
            prompt_tokens=prompt.length,
            max_tokens=max_tokens,
            cache=make_prompt_cache(self.vm.model.language_model),
            sampler=_sampler(job.sampling.normalized(self.vm.vocab_size), self.vm.vocab_size),
            processors=[*_processors(job.sampling), *grammar],  # the grammar last: nothing lifts its mask
            stops=StopMatcher(job.stop),
            text=TextStream(self.vm.processor),
            history=prompt.input_ids.reshape(-1)[-PENALTY_CONTEXT:],
            unread=prompt,
        )

    def _embed(self, seq: _Sequence, prompt: Prompt) -> _Unread:
        """Run the vision tower over the prompt's images: its embeddings, and what else the
        language model reads with them (as mlx-vlm's generate_step passes it)."""
        features = self.vm.model.get_input_embeddings(
            prompt.input_ids, prompt.pixel_values, mask=prompt.mask, **prompt.extra
        )
        extra = {k: v for k, v in features.to_dict().items() if k != "inputs_embeds" and v is not None}
        delta = extra.pop("rope_deltas", None)  # kept by the model between calls: the batch passes positions
        mx.eval(features.inputs_embeds)
        seq.rope_delta = int(delta.reshape(-1)[0].item()) if delta is not None else 0
        return _Unread(prompt.input_ids, features.inputs_embeds, extra)

    def _prefill_step(self) -> None:
        """Encode images and read prompts, the shortest first (a chat's images and prompt go
        before a long page's), about `prefill_chunk` tokens a step: a burst of short chats is
        read in one step, a long page a chunk at a time between the others' tokens."""
        budget = self.prefill_chunk
        while budget > 0:
            waiting = [s for s in self.sequences.values() if s.unread is not None]
            if not waiting:
                return
            budget -= self._read(min(waiting, key=lambda s: cast(Prompt | _Unread, s.unread).length))

    def _read(self, seq: _Sequence) -> int:
        """One piece of the job's prompt: all but the last token in chunks, then the last token
        alone, as mlx-vlm's generate_step splits a prompt (the same pieces give the same
        numbers, whatever else is waiting); after the last, its first token is sampled and it
        joins the decode batch. Returns the tokens read."""
        unread = seq.unread
        if isinstance(unread, Prompt):
            unread = self._embed(seq, unread)
        assert unread is not None
        n = min(self.prefill_chunk, unread.length - 1) if unread.length > 1 else 1
        lm = self.vm.model.language_model
        out = lm(unread.ids[:, :n], inputs_embeds=unread.embeds[:, :n], cache=seq.cache, **unread.extra)
        if n < unread.length:
            mx.eval([c.state for c in seq.cache])
            seq.unread = _Unread(unread.ids[:, n:], unread.embeds[:, n:], unread.extra)
            return n
        seq.unread = None
        self._sample([seq], out.logits[:, -1, :])
        if not self.batches or not self.batched:
            self.batches.append(DecodeBatch(self.vm.model.language_model))
        self.batches[-1].join(seq.job_id, seq.cache)
        seq.cache = []  # the batch holds it now
        return n

    # --- decoding ---

    def _decode(self, batch: DecodeBatch) -> None:
        """One forward pass for the tokens just emitted, every decoding job's a row of it;
        each row's next token is sampled as its job asks (evaluated after the step)."""
        rows = [self.sequences[job_id] for job_id in batch.rows]
        tokens = [cast(mx.array, seq.pending) for seq in rows]  # sampled by _prefill_step or the last _decode
        # The token just emitted goes to cache offset prompt + tokens - 1; mRoPE shifts it.
        positions = [seq.prompt_tokens + seq.tokens - 1 + seq.rope_delta for seq in rows] if self.vm.mrope else None
        self._sample(rows, batch.logits(tokens, positions))

    def _sample(self, rows: list[_Sequence], logits: mx.array) -> None:
        """Each row's next token from its logits (rows x vocabulary), as its job asks; its
        `pending` token and log-probabilities compute asynchronously."""
        # float32 from here on: log-probabilities in the model's bfloat16 tie tokens whose
        # logits differ (argmax then takes the lower id), and clients read them as logprobs.
        logits = logits.astype(mx.float32)
        if any(seq.processors for seq in rows):  # penalties, biases, grammars: per job
            logits = mx.concatenate([self._process(seq, logits[i : i + 1]) for i, seq in enumerate(rows)])
        if self.vm.vocab_size > self.vm.text_vocab_size:  # padded rows name no token
            logits = logits + self.vocab_mask
        logprobs = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
        greedy = mx.argmax(logprobs, axis=-1)
        for i, seq in enumerate(rows):
            token = greedy[i : i + 1] if seq.sampler is None else seq.sampler(logprobs[i : i + 1]).reshape(-1)
            if seq.processors:
                seq.history = mx.concatenate([seq.history, token.astype(seq.history.dtype)])[-PENALTY_CONTEXT:]
            seq.pending, seq.pending_logprobs = token, logprobs[i]
        mx.async_eval([a for seq in rows for a in (seq.pending, seq.pending_logprobs)])

    @staticmethod
    def _process(seq: _Sequence, logits: mx.array) -> mx.array:
        for processor in seq.processors:
            logits = processor(seq.history, logits)
        return logits

    @property
    def vocab_mask(self) -> mx.array:
        if self._vocab_mask is None:
            ids = mx.arange(self.vm.vocab_size)
            self._vocab_mask = mx.where(ids < self.vm.text_vocab_size, 0.0, -mx.inf)
        return self._vocab_mask

    def _emit(self, seq: _Sequence, events: list[StepEvent]) -> str | None:
        """Send the job's pending token as text (and logprob); returns its finish reason."""
        assert seq.pending is not None  # sampled in _prefill_step, and by every _decode since
        token = cast(int, seq.pending.item())
        seq.tokens += 1
        eos = token in self.vm.eos_token_ids
        finish = "stop" if eos else "length" if seq.tokens >= seq.max_tokens else None
        piece = "" if eos else seq.text.add(token)  # an end-of-sequence token is never text
        if finish is not None:
            piece += seq.text.finish()
        text, stopped = seq.stops.feed(piece)
        if stopped:
            finish = "stop"
        elif finish is not None:
            text += seq.stops.flush()
        logprob = self._logprob(seq, token) if seq.request.logprobs else None
        if text or logprob is not None:
            extra = {"logprobs": [logprob.model_dump()]} if logprob is not None else {}
            events.append((seq.job_id, EventType.DELTA, {"text": text, **extra}))
        return finish

    def _usage(self, seq: _Sequence) -> dict:
        return Usage(
            prompt_tokens=seq.prompt_tokens,
            completion_tokens=seq.tokens,
            total_tokens=seq.prompt_tokens + seq.tokens,
            prompt_tokens_details=PromptTokensDetails(cached_tokens=0),
        ).model_dump()

    def _logprob(self, seq: _Sequence, token: int) -> TokenLogprob:
        assert seq.pending_logprobs is not None  # set with seq.pending
        return token_logprob(self.vm.tokenizer, seq.pending_logprobs, token, seq.request.top_logprobs)


def _processors(params: SamplingParams) -> list:
    return make_logits_processors(
        logit_bias=params.logit_bias or None,
        repetition_penalty=params.repetition_penalty,
        repetition_context_size=PENALTY_CONTEXT,
        presence_penalty=params.presence_penalty or None,
        presence_context_size=PENALTY_CONTEXT,
        frequency_penalty=params.frequency_penalty or None,
        frequency_context_size=PENALTY_CONTEXT,
    )


def _sampler(params: SamplingParams, vocab_size: int):
    """None for greedy decoding: the batch takes every greedy row's argmax at once."""
    if params.temperature == 0:
        return None
    top_k = params.top_k if 0 < params.top_k < vocab_size else 0
    if params.seed is not None:
        return SeededSampler(params, FILTERS, top_k)
    return make_sampler(temp=params.temperature, top_p=params.top_p, min_p=params.min_p, top_k=top_k)

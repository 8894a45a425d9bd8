"""Memory-aware admission for the text engine: a job starts only when its KV cache fits.

A batch of long prompts grows its KV cache every step; without a bound, the worker runs out of
memory and dies with every job it holds. So each job reserves, when it would start, the KV its
prompt and its whole completion can take — `(prompt + max_tokens) × bytes per token` at the
cache's precision (worker_text/kv_quant.py) — against the worker's budget: what MLX may use on
the device (or WORKER_MEMORY_GB) less what the weights already take and a margin for the
forward pass's activations. A job that does not fit now waits (held by the engine, which then
admits nothing more from the queue: other workers can take those jobs); a job that could never
fit, even alone, is refused with a 400 naming the limit. Reservations are released when a job
ends. The prompt cache's bytes (PROMPT_CACHE_BYTES) are set aside whole: mlx-lm's LRUPromptCache
trims itself to that bound.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from runtime.rejections import RequestRejected

ACTIVATION_MARGIN = 0.10
"""Share of the limit kept free for a step's activations and MLX's allocator slack."""
COPY_FACTOR = 2
"""mlx-lm's batch cache grows by copying: a sequence joining the batch concatenates the whole
batch's KV, and buffers are reallocated every STEP tokens, so at such a moment the KV exists
twice. Measured with tiny-text on a 1.3 MB limit: reservations within a budget that ignored it
peaked at 1.9x the reserved KV."""
STEP = 256
"""Tokens a KV buffer grows by (mlx-lm's KVCache.step): a job's KV is allocated in these."""
GB = 1024**3


class KVBudgetExceeded(RequestRejected):
    code = "kv_budget_exceeded"


@dataclass
class KVBudget:
    """Bytes of KV cache the worker's jobs may reserve; only the engine thread uses it."""

    budget: int
    """Bytes for KV caches (after weights and margin)."""
    bytes_per_token: int
    reserved: dict[str, int] = field(default_factory=dict)
    """Bytes each begun job may grow its KV to."""
    waiting: deque[tuple[str, int, Callable[[], None]]] = field(default_factory=deque)
    """Jobs whose start waits for memory: (job id, bytes, start), first come first served."""

    limit: int = 0
    """The worker's whole memory limit (weights, KV, prompt cache, margin)."""

    @classmethod
    def for_worker(cls, limit_bytes: int, weights_bytes: int, cache_bytes: int, bytes_per_token: int) -> KVBudget:
        """The KV budget: the limit less the margin, the weights and the prompt cache's bound."""
        budget = (int(limit_bytes * (1 - ACTIVATION_MARGIN)) - weights_bytes - cache_bytes) // COPY_FACTOR
        if budget <= STEP * bytes_per_token:
            raise ValueError(
                f"the model's weights ({weights_bytes / GB:.3f} GB) and prompt cache ({cache_bytes / GB:.3f} GB, "
                f"PROMPT_CACHE_BYTES) leave no room for a KV cache in {limit_bytes / GB:.3f} GB (WORKER_MEMORY_GB)"
            )
        return cls(budget, max(1, bytes_per_token), limit=limit_bytes)

    @property
    def used(self) -> int:
        return sum(self.reserved.values())

    def need(self, prompt_tokens: int, max_tokens: int) -> int:
        return -(-(prompt_tokens + max_tokens) // STEP) * STEP * self.bytes_per_token

    def check(self, prompt_tokens: int, max_tokens: int) -> int:
        """The job's bytes; refused when it could never fit, even alone."""
        need = self.need(prompt_tokens, max_tokens)
        if need > self.budget:
            most = self.budget // self.bytes_per_token // STEP * STEP
            raise KVBudgetExceeded(
                f"this request needs {prompt_tokens + max_tokens} tokens of KV cache (prompt {prompt_tokens} "
                f"+ max_tokens {max_tokens}, {need / GB:.2f} GB); this worker's memory holds at most {most} "
                f"tokens ({self.budget / GB:.2f} GB for KV caches: WORKER_MEMORY_GB, KV_BITS). Lower max_tokens "
                "or shorten the prompt",
                param="max_tokens",
            )
        return need

    def start(self, job_id: str, need: int, begin: Callable[[], None]) -> bool:
        """Begin the job now if it fits (and no earlier job waits); else hold it. True: began."""
        if not self.waiting and self.used + need <= self.budget:
            self.reserved[job_id] = need
            begin()
            return True
        self.waiting.append((job_id, need, begin))
        return False

    def release(self, job_id: str) -> bool:
        """The job's bytes are free again; True when it was still waiting (it never began)."""
        self.reserved.pop(job_id, None)
        before = len(self.waiting)
        self.waiting = deque(w for w in self.waiting if w[0] != job_id)
        return len(self.waiting) < before

    def admit_waiting(self) -> None:
        """Begin the waiting jobs that fit now, in order (called before each step)."""
        while self.waiting and self.used + self.waiting[0][1] <= self.budget:
            job_id, need, begin = self.waiting.popleft()
            self.reserved[job_id] = need
            begin()

    @property
    def holding(self) -> bool:
        """Jobs wait for memory: the worker should take no more from its queues."""
        return bool(self.waiting)

    def status(self) -> dict:
        import mlx.core as mx

        return {
            "peak_bytes": mx.get_peak_memory(),
            "kv_budget_bytes": self.budget,
            "kv_reserved_bytes": self.used,
            "kv_bytes_per_token": self.bytes_per_token,
            "limit_bytes": self.limit,
            "jobs_waiting_for_memory": len(self.waiting),
        }

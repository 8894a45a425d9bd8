"""One prefill for identical prompts admitted together (the `n` choices of one request, or
several clients sending the same prompt at once).

The prompt cache (mlx-lm's LRU) only learns a prefix when a sequence finishes, so jobs with
the same prompt admitted in one step would each prefill it. Instead the first one leads: it
is inserted and prefilled as usual; the others follow — they wait, not inserted, and when
the leader's prompt is done (mlx-lm reports `end_of_prompt`) each starts from a copy of the
leader's KV cache, prefilling only the last prompt token (whose logits are its own). A
follower whose leader goes before its prompt is done (cancelled, failed) is inserted as
usual. The engine owns the inserts; this keeps the bookkeeping.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field

from mlx_lm.models.cache import can_trim_prompt_cache, trim_prompt_cache

Insert = Callable[[list | None], int]
"""Inserts a waiting job, from the leader's cache of the whole prompt (None: as usual)."""


@dataclass
class Follower:
    job_id: str
    insert: Insert


@dataclass
class SharedPrefill:
    leaders: dict[tuple[int, ...], int] = field(default_factory=dict)
    """A prompt being prefilled → its leader's uid."""
    followers: dict[int, list[Follower]] = field(default_factory=dict)
    """A leader's uid → the jobs waiting for its prompt."""
    prompts: dict[int, tuple[int, ...]] = field(default_factory=dict)

    def leader_of(self, prompt: list[int]) -> int | None:
        return self.leaders.get(tuple(prompt)) if len(prompt) > 1 else None

    def lead(self, uid: int, prompt: list[int]) -> None:
        key = tuple(prompt)
        if len(prompt) > 1 and key not in self.leaders:
            self.leaders[key], self.prompts[uid] = uid, key

    def follow(self, leader: int, job_id: str, insert: Insert) -> None:
        self.followers.setdefault(leader, []).append(Follower(job_id, insert))

    def prefilled(self, uid: int) -> list[Follower]:
        """The leader's prompt is done (or it is gone): its followers, now to insert."""
        key = self.prompts.pop(uid, None)
        if key is not None:
            del self.leaders[key]
        return self.followers.pop(uid, [])

    def drop(self, job_id: str) -> bool:
        """Forget a waiting follower (cancelled before it started); True if it was one."""
        for waiting in self.followers.values():
            for follower in waiting:
                if follower.job_id == job_id:
                    waiting.remove(follower)
                    return True
        return False


def from_shared(cache: list, prompt: list[int]) -> tuple[list | None, list[int]]:
    """A copy of a leader's cache of `prompt` less its last token, which the follower
    prefills itself (its first logits are its own); the whole prompt when the cache cannot be
    trimmed."""
    if not can_trim_prompt_cache(cache):
        return None, prompt
    mine = copy.deepcopy(cache)
    trim_prompt_cache(mine, 1)
    return mine, prompt[-1:]

"""How much of a prompt one engine step reads: the text and vision engines alike."""

from __future__ import annotations

import mlx.core as mx


def default_prefill_chunk() -> int:
    """PREFILL_CHUNK's default: small on a CPU, where prefill runs ~15 tokens/s for SmolLM2-135M
    (64 tokens ≈ 4 s between two decode steps of the others) and a 64-token chunk of the tiny
    vision model at 20k tokens of context takes ~0.3 s; larger where it is fast."""
    return 64 if mx.default_device() == mx.cpu else 512

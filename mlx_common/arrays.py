"""Arrays a model computed while it was built, evaluated where they were built."""

from __future__ import annotations

import mlx.core as mx
from mlx import nn


def materialize(model: nn.Module) -> None:
    """Evaluate, in this thread, every array the model computed while it was built: such an
    array is bound to this thread's stream, which the engine thread cannot use ("There is no
    Stream(cpu, 0) in current thread"). Pixtral keeps its rotary table on a plain object held
    by a module, where `parameters()` does not look."""
    arrays = [model.parameters()]
    for _, module in model.named_modules():
        for value in vars(module).values():
            if isinstance(value, mx.array):
                arrays.append(value)
            elif not isinstance(value, nn.Module) and hasattr(value, "__dict__"):
                arrays += [v for v in vars(value).values() if isinstance(v, mx.array)]
    mx.eval(arrays)

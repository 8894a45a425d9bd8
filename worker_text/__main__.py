"""`python -m worker_text --model REF`: one long-lived worker serving one mlx-lm model."""

from __future__ import annotations

import sys
from pathlib import Path

from contract.keys import Kind
from contract.settings import Settings
from runtime.cli import run_worker


def make_engine(model: str, settings: Settings, capacity: int):
    import mlx.core as mx  # imports mlx; kept out of --help

    from contract.modelref import ModelLoadError

    from .disk_cache import DiskPromptCache
    from .engine import TextEngine
    from .kv_quant import check_kv_quantization, kv_bytes_per_token
    from .loading import load_text_model
    from .memory import GB, KVBudget
    from .prompt_caches import model_key

    text_model = load_text_model(model, settings)
    bits, group = settings.kv_bits, settings.kv_group_size
    # The memory budget (worker_text/memory.py): what MLX may use, less the weights just loaded.
    limit = int(settings.worker_memory_gb * GB) if settings.worker_memory_gb else mx.get_memory_limit()
    try:
        if bits is not None:  # an architecture or head size the quantized cache cannot serve: refused here
            check_kv_quantization(text_model.model, bits, group)
        per_token = kv_bytes_per_token(text_model.model, bits, group)
        budget = KVBudget.for_worker(limit, mx.get_active_memory(), settings.prompt_cache_bytes, per_token)
    except ValueError as exc:  # a group size the heads cannot take, or no room left for KV
        raise ModelLoadError(f"{model}: {exc}") from exc
    # KV prefixes on disk, keyed by the model's files and the cache's precision (worker_text/disk_cache.py):
    # a dequantized model's caches are float32, not the quantized model's dtype (the key names
    # it only then, so the quantized model's existing caches keep their key).
    disk = None
    if text_model.path is not None and settings.prompt_cache_disk_gb > 0:
        weights = {"weights": "float32-dequantized"} if text_model.dequantized else {}
        disk = DiskPromptCache(
            Path(settings.prompt_cache_dir),
            int(settings.prompt_cache_disk_gb * GB),
            model_key(text_model.path, text_model.model_id, kv_bits=bits, kv_group_size=group, **weights),
        )
    return TextEngine(
        text_model,
        capacity,
        settings.prompt_cache_bytes,
        prefill_chunk=settings.prefill_chunk,
        budget=budget,
        kv_quantization=(bits, group) if bits is not None else None,
        disk=disk,
    )


def main(argv: list[str] | None = None) -> int:
    if argv is None:  # run as a program: on a Linux CPU, OpenBLAS preloaded by a re-exec
        from mlx_common.cpu_blas import start_worker_on_blas

        if (status := start_worker_on_blas()) is not None:
            return status
    return run_worker(
        Kind.TEXT,
        argv,
        description=__doc__,
        make_engine=make_engine,
        default_capacity=lambda settings: settings.worker_capacity,
        capacity_help="jobs run at once in one batch (default: WORKER_CAPACITY, 8)",
    )


if __name__ == "__main__":
    sys.exit(main())

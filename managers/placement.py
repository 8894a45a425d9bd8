"""Where a model goes: this machine's memory, a model's estimated size, and the placement
rule every manager applies to a load command (a pure function, so it is unit-tested)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from contract.commands import LoadCommand
from contract.modelref import HUB_PATTERNS, ModelRef
from contract.registry import ManagerInfo
from contract.settings import Settings

HEADROOM = 0.9
"""A model must fit in this share of the available memory."""
SIZE_FACTOR = 1.2
"""Estimated memory of a model: its safetensors bytes times this (activations, caches)."""


def machine_memory(settings: Settings) -> tuple[int, int]:
    """(total, available) bytes: /proc/meminfo on Linux; elsewhere (macOS) the total only,
    taken as available too (unified memory is mostly free for the model anyway)."""
    if settings.manager_memory_bytes:
        return settings.manager_memory_bytes, settings.manager_memory_bytes
    try:
        values = {}
        for line in Path("/proc/meminfo").read_text().splitlines():
            key, _, rest = line.partition(":")
            values[key] = int(rest.split()[0]) * 1024
        return values["MemTotal"], values.get("MemAvailable", values["MemTotal"])
    except (OSError, KeyError, ValueError, IndexError):
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        return total, total


def estimate_bytes(ref: ModelRef) -> int:
    """Memory a model will take: its weights x SIZE_FACTOR; 0 when unknown (a hub model not
    in the local cache is downloaded by the worker, which then reports its own state)."""
    path = ref.local_path or _cached_snapshot(ref.repo_id)
    if path is None:
        return 0
    return int(sum(p.stat().st_size for p in Path(path).glob("*.safetensors")) * SIZE_FACTOR)


def _cached_snapshot(repo_id: str | None) -> Path | None:
    try:
        from huggingface_hub import snapshot_download

        assert repo_id is not None  # a hub ref when local_path is unset (an error here is caught below)
        return Path(snapshot_download(repo_id, allow_patterns=HUB_PATTERNS, local_files_only=True))
    except Exception:  # not cached, no huggingface_hub: size unknown
        return None


@dataclass
class Decision:
    start: bool = False
    failure: str = ""
    unfit: bool = False
    """Declined because the model does not fit here at all."""


def place(me: ManagerInfo, managers: list[ManagerInfo], command: LoadCommand, need: int) -> Decision:
    """Start here, pass the command on, or fail it. The best place is the live manager with
    the fewest replicas of the model, then the most free memory, then the first name. A
    manager that passed the command on stays a candidate (its view may have been stale);
    after two rounds the command stops wherever it is, so views that disagree cannot
    bounce it forever."""
    others = [m for m in managers if m.name != me.name and m.kind == me.kind]
    if not _fits(me, need):
        unfit = set(command.unfit) | {me.name}
        if all(m.name in unfit for m in others):
            most = max([me.mem_available_bytes] + [m.mem_available_bytes for m in others])
            return Decision(
                failure=f"does not fit on any machine (needs {_gb(need)}, most free is {_gb(most * HEADROOM)})"
            )
        return Decision(unfit=True)
    if len(command.declined_by) >= 2 * (len(others) + 1):
        return Decision(start=True)
    candidates = [m for m in others if m.name not in command.unfit and _fits(m, need)] + [me]
    best = min(candidates, key=lambda m: (m.replicas(command.model), -m.mem_available_bytes, m.name))
    return Decision(start=best.name == me.name)


def _fits(info: ManagerInfo, need: int) -> bool:
    return need <= info.mem_available_bytes * HEADROOM


def _gb(n: float) -> str:
    return f"{n / 1e9:.2f} GB"

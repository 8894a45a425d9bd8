"""This machine's GPUs, and the one a manager pins each new worker to.

More than one GPU on a host means more workers, not a model split across GPUs: a manager runs
one worker per GPU, each pinned with `CUDA_VISIBLE_DEVICES=<index>`, all taking jobs from the
model's one queue. GPUs are named by `nvidia-smi`'s index (PCI bus order); a pinned worker also
gets `CUDA_DEVICE_ORDER=PCI_BUS_ID`, since CUDA's default order (fastest first) may number the
same GPUs differently. Parsing, selection and the choice of a GPU are pure functions, so they
are unit-tested on sample output; only `query_smi` runs anything.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from contract.settings import Settings

log = logging.getLogger("mis.manager")

QUERY = ["nvidia-smi", "--query-gpu=index,uuid,memory.total,memory.free", "--format=csv,noheader,nounits"]
SMI_TIMEOUT = 10.0
"""Seconds nvidia-smi may take (it answers in well under one; a wedged driver can hang it)."""


@dataclass(frozen=True)
class Gpu:
    index: int
    """nvidia-smi's index: what CUDA_VISIBLE_DEVICES names under CUDA_DEVICE_ORDER=PCI_BUS_ID."""
    uuid: str = ""
    total_mib: int | None = None
    free_mib: int | None = None
    """None: unknown (no nvidia-smi, or it printed `[N/A]`)."""


def parse_smi(text: str) -> list[Gpu]:
    """nvidia-smi's CSV (QUERY) → GPUs by index; lines that are not a GPU are skipped."""
    gpus = []
    for line in text.splitlines():
        parts = [part.strip() for part in line.split(",")]
        if len(parts) != 4 or not parts[0].isdigit():
            continue
        gpus.append(Gpu(int(parts[0]), parts[1], _mib(parts[2]), _mib(parts[3])))
    return sorted(gpus, key=lambda g: g.index)


def _mib(text: str) -> int | None:
    try:
        return int(float(text))
    except ValueError:  # "[N/A]", "[Not Supported]" (MIG mode, some boards)
        return None


def visible(value: str | None, gpus: list[Gpu]) -> list[int] | None:
    """The indices an existing CUDA_VISIBLE_DEVICES leaves visible; None when it is unset (all).
    Entries are indices or UUIDs (a unique prefix, as CUDA takes them). CUDA ignores every entry
    from the first one it cannot resolve on, so this does too: `""` and `-1` hide every GPU, and
    a MIG instance (which cannot be named by an index) ends the list."""
    if value is None:
        return None
    indices: list[int] = []
    known = {g.index for g in gpus}
    for entry in (part.strip() for part in value.split(",")):
        if entry.isdigit() and (not gpus or int(entry) in known):
            index = int(entry)
        elif entry.startswith("GPU-") and len(found := [g for g in gpus if g.uuid.startswith(entry)]) == 1:
            index = found[0].index
        else:
            break
        if index not in indices:
            indices.append(index)
    return indices


def select(setting: str, cuda_visible: str | None, smi: list[Gpu] | None) -> list[Gpu]:
    """The GPUs a manager pins its workers to: MANAGER_GPUS (`auto`, `none`, or indices as
    Settings normalizes them) within CUDA_VISIBLE_DEVICES; `smi` is nvidia-smi's answer, None
    when it could not be asked (then named GPUs are taken on trust, free memory unknown)."""
    if setting == "none":
        return []
    listed = {g.index: g for g in smi or []}
    wanted = sorted(listed) if setting == "auto" else [int(part) for part in setting.split(",")]
    if smi is not None:
        wanted = [i for i in wanted if i in listed]  # a GPU this machine does not have
    allowed = visible(cuda_visible, smi or [])
    if allowed is not None:
        wanted = [i for i in wanted if i in allowed]
    return [listed.get(i, Gpu(i)) for i in wanted]


def pick(gpus: list[Gpu], pinned: Iterable[int]) -> Gpu:
    """Where a new worker goes: the GPU with the fewest of this manager's workers (`pinned`:
    their GPUs), then the most free memory (unknown counts as none, so all unknown tie), then
    the lowest index. Counting workers first matters: a worker just started has not taken its
    memory yet, so free memory alone would put the next one beside it."""
    counts = Counter(pinned)
    return min(gpus, key=lambda g: (counts[g.index], -(g.free_mib or 0), g.index))


def query_smi() -> list[Gpu] | None:
    """nvidia-smi's GPUs now; None without nvidia-smi or when it fails (no driver loaded)."""
    if shutil.which(QUERY[0]) is None:
        return None
    try:
        out = subprocess.run(QUERY, capture_output=True, text=True, timeout=SMI_TIMEOUT, check=True).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        log.warning("nvidia-smi failed (%s): GPU memory unknown", exc)
        return None
    return parse_smi(out)


def discover(settings: Settings) -> list[Gpu]:
    """This manager's GPUs, once at start-up (MANAGER_GPUS, CUDA_VISIBLE_DEVICES, nvidia-smi)."""
    if settings.manager_gpus == "none":
        return []
    smi = query_smi()
    gpus = select(settings.manager_gpus, settings.cuda_visible_devices, smi)
    if settings.manager_gpus != "auto" and len(gpus) < len(settings.manager_gpus.split(",")):
        log.warning("MANAGER_GPUS=%s: only GPUs %s are present and visible", settings.manager_gpus,
                    [g.index for g in gpus])  # fmt: skip
    if gpus:
        log.info("pinning workers to GPUs %s", ", ".join(str(g.index) for g in gpus))
    return gpus


def refresh(gpus: list[Gpu]) -> list[Gpu]:
    """The same GPUs with nvidia-smi's free memory now (as before where it cannot say):
    placement wants the memory the other workers on this host hold at this moment."""
    now = {g.index: g for g in query_smi() or []}
    return [now.get(g.index, g) for g in gpus]

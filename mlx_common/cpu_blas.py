"""A real BLAS under MLX on a Linux CPU: find OpenBLAS, preload it into text and embedding
workers, say which BLAS a worker runs on.

Why: mlx's Linux CPU wheel (0.32.4) does every float matrix product with `cblas_sgemm` from the
reference BLAS it bundles (mlx_cpu.libs/libblas-*.so.3.10.0): ~3.7 GFLOP/s on 2 cores. With
OpenBLAS in its place fp32 GEMM runs at 23 GFLOP/s for 8 rows and 103 for 64, and SmolLM2-135M,
dequantized to float32 (worker_text/cpu_weights.py), gives its first token ~18x sooner through
the stack (docs/PERFORMANCE.md, "The CPU path").

How: libmlx.so resolves `cblas_sgemm` through the process's global scope before its own
dependencies, so a library in LD_PRELOAD wins. LD_PRELOAD is read only when a process starts,
hence `preload_blas` re-executes the worker (same pid, same argv) with OpenBLAS prepended to it,
before anything is loaded; the API and the vision workers (quantized models, their own venv)
are never touched. It is reversible: `CPU_BLAS=off` keeps MLX's own BLAS.

    python -m mlx_common.cpu_blas hint     # one line for `make run` when no BLAS is found
"""

from __future__ import annotations

import ctypes
import glob
import logging
import os
import platform
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

from contract.settings import Settings

log = logging.getLogger("mis.cpu_blas")

INSTALL = "apt-get install libopenblas0-pthread"
HINT = f"hint: install OpenBLAS ({INSTALL}): a text worker on this CPU answers its first token ~18x sooner"
OFF = ("off", "0", "none", "false", "no")
LIBDIRS = {"x86_64": "x86_64-linux-gnu", "aarch64": "aarch64-linux-gnu"}
LDCONFIG_ARCH = {"x86_64": "x86-64", "aarch64": "AArch64"}
"""How `ldconfig -p` tags a library of this machine's architecture (other arches are listed too)."""
MAX_THREADS = 8
"""OPENBLAS_NUM_THREADS when unset: one thread per core, at most this many. On 2 cores, through
the stack (SmolLM2-135M float32, bench/cpu_path.py; docs/PERFORMANCE.md): one worker with 2
threads prefills 40 tokens in 0.26 s against 0.32 s with 1, and 8 clients get 77 tokens/s
against 64; two busy workers of 2 threads each get 54 together against 67 with 1 thread each
(OpenBLAS threads spin while they wait, so two processes fight for the cores) — set
OPENBLAS_NUM_THREADS=1 for a machine of several busy text workers. The cap of 8 is a guard for
large machines (rows of at most a 64-token chunk gain little from more threads), not measured."""


class BlasNotFound(ValueError):
    """CPU_BLAS names a file that does not exist."""


def candidates(machine: str | None = None) -> list[Path]:
    """Where distributions put OpenBLAS, best first: Debian/Ubuntu's pthread and OpenMP builds
    and the alternatives link, Fedora's (pthread first; never the 64-bit-integer builds, whose
    symbols are suffixed), then whatever `ldconfig -p` knows."""
    machine = machine or platform.machine()
    libdir = f"/usr/lib/{LIBDIRS.get(machine, machine + '-linux-gnu')}"
    paths = [
        f"{libdir}/openblas-pthread/libopenblas.so.0",
        f"{libdir}/openblas-openmp/libopenblas.so.0",
        f"{libdir}/libopenblas.so.0",
    ]
    fedora = [p for p in glob.glob("/usr/lib64/libopenblas*.so*") if "64_" not in Path(p).name]
    paths += sorted(fedora, key=lambda p: (not Path(p).name.startswith("libopenblasp"), p))
    return [Path(p) for p in paths] + _ldconfig(LDCONFIG_ARCH.get(machine))


def _ldconfig(arch: str | None) -> list[Path]:
    try:
        out = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True, timeout=5, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    found = []
    for line in out.splitlines():
        name, _, target = line.strip().partition(" => ")
        if name.startswith("libopenblas") and "64_" not in name and (arch is None or arch in name):
            found.append(Path(target.strip()))
    return found


def find_blas(setting: str, search: list[Path] | None = None) -> Path | None:
    """The BLAS to preload for CPU_BLAS: `auto` the first OpenBLAS found (None: none here),
    `off` none, a path that file (BlasNotFound when it is missing: a typo must not silently
    leave the worker many times slower)."""
    value = setting.strip()
    if value.lower() in OFF or not value:
        return None
    if value.lower() != "auto":
        path = Path(value)
        if not path.is_file():
            raise BlasNotFound(
                f"CPU_BLAS={value}: no such file (give a BLAS library such as libopenblas.so.0, or auto, or off)"
            )
        return path
    return next((p for p in (candidates() if search is None else search) if p.is_file()), None)


def on_cpu() -> bool:
    """Whether this process's MLX computes on a Linux CPU (no CUDA), where the BLAS matters."""
    if sys.platform != "linux":
        return False
    import mlx.core as mx

    cuda = getattr(mx, "cuda", None)
    if cuda is not None and cuda.is_available():
        return False
    return mx.default_device().type == mx.cpu


def preloaded(env: Mapping[str, str], lib: Path) -> bool:
    return str(lib) in env.get("LD_PRELOAD", "").replace(":", " ").split()


def preload_env(env: Mapping[str, str], lib: Path, cores: int | None = None) -> dict[str, str]:
    """`env` with `lib` first in LD_PRELOAD, and OPENBLAS_NUM_THREADS set when unset."""
    rest = env.get("LD_PRELOAD", "")
    composed = {**env, "LD_PRELOAD": f"{lib}:{rest}" if rest else str(lib)}
    if not env.get("OPENBLAS_NUM_THREADS"):
        composed["OPENBLAS_NUM_THREADS"] = str(max(1, min(MAX_THREADS, cores or _cores())))
    return composed


def _cores() -> int:
    # The cores this process may run on (a container's or taskset's share), not the machine's.
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def preload_blas(settings: Settings) -> None:
    """Re-execute this worker with the BLAS preloaded, when on a Linux CPU, a BLAS was found and
    none is in place yet; returns when there is nothing to do. BlasNotFound: a bad CPU_BLAS."""
    lib = find_blas(settings.cpu_blas)
    if lib is None or preloaded(os.environ, lib) or blas_in_use() is not None or not on_cpu():
        return  # blas_in_use: someone preloaded a BLAS of their own (MKL, BLIS): keep theirs
    sys.stdout.flush()
    sys.stderr.flush()
    # The one place this process composes an environment: its own, for the re-exec.
    os.execve(sys.executable, sys.orig_argv, preload_env(os.environ, lib))


def start_worker_on_blas() -> int | None:
    """A text or embedding worker's first step, run as a program: `preload_blas` with its
    settings. None: carry on (nothing to preload, or this is the re-executed process); 2: a bad
    CPU_BLAS, said on stderr — the worker's exit status."""
    try:
        preload_blas(Settings())
    except BlasNotFound as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return None


class _DlInfo(ctypes.Structure):
    _fields_ = [
        ("dli_fname", ctypes.c_char_p),
        ("dli_fbase", ctypes.c_void_p),
        ("dli_sname", ctypes.c_char_p),
        ("dli_saddr", ctypes.c_void_p),
    ]


def blas_in_use() -> str | None:
    """The library whose `cblas_sgemm` MLX calls, when it is not MLX's own: the one the global
    scope (LD_PRELOAD first) provides — what libmlx.so binds to before its bundled reference
    BLAS, which Python loads privately (RTLD_LOCAL) and so is never found here. None: MLX's own."""
    if sys.platform != "linux":
        return None
    process = ctypes.CDLL(None)
    if not hasattr(process, "cblas_sgemm"):
        return None
    sgemm = ctypes.cast(process.cblas_sgemm, ctypes.c_void_p)
    try:
        dladdr = process.dladdr  # in libc since glibc 2.34; in libdl before
    except AttributeError:
        dladdr = ctypes.CDLL("libdl.so.2").dladdr
    info = _DlInfo()
    if not dladdr(sgemm, ctypes.byref(info)) or not info.dli_fname:
        return None
    return os.fsdecode(info.dli_fname)


def describe() -> str:
    """The start log's line."""
    blas = blas_in_use()
    return f"CPU BLAS: {blas}" if blas else f"CPU BLAS: MLX's reference BLAS (slow; {INSTALL}, docs/DEPLOYMENT.md)"


def cpu_status(dequantized: bool) -> dict:
    """What a CPU worker's registry entry adds to its memory figures (/admin/status)."""
    return {"cpu_blas": blas_in_use() or "reference", "dequantized": dequantized}


def hint(settings: Settings) -> str | None:
    """`make run`'s line when its text worker would run on the reference BLAS."""
    try:
        found = find_blas(settings.cpu_blas)
    except BlasNotFound as exc:
        return f"warning: {exc}"
    if found is not None or settings.cpu_blas.strip().lower() != "auto" or not on_cpu():
        return None
    return HINT


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args != ["hint"]:
        print("usage: python -m mlx_common.cpu_blas hint", file=sys.stderr)
        return 2
    line = hint(Settings())
    if line:
        print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

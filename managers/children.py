"""The workers a manager runs: one `Child` per worker across its restarts, and what a worker
process does before it runs (`die_with_parent`)."""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from contract.reasons import safe_text
from contract.registry import ManagedState

RESTART_MIN = 1.0
"""Back-off before restarting a crashed worker: doubles from RESTART_MIN up to RESTART_MAX."""


@dataclass
class Child:
    """One worker this manager runs, across its restarts."""

    model: str
    keep_alive: int
    capacity: int | None
    popen: subprocess.Popen[bytes] | None = None
    """Set by Manager._start, before the child joins Manager.children."""
    log_path: Path | None = None
    state: ManagedState = ManagedState.RUNNING
    restarts: int = 0
    delay: float = RESTART_MIN
    restart_at: float = 0.0
    started: float = field(default_factory=time.monotonic)
    created_at: float = field(default_factory=time.time)
    """When its first process started: an unload sent after that covers its restarts too."""
    command_id: str = ""
    """The load command waiting for this worker to serve (then cleared)."""
    env: dict[str, str] = field(default_factory=dict)
    """Settings of this worker alone (a load's KV_BITS), over the manager's environment."""

    def log_tail(self, lines: int = 5) -> str:
        """The end of its log, made safe to show a client (a failed load's reason)."""
        assert self.log_path is not None  # set by Manager._start with popen
        try:
            tail = self.log_path.read_text(errors="replace").strip().splitlines()[-lines:]
        except OSError:
            return "no output"
        return " | ".join(safe_text(line) for line in tail)[-500:]


PR_SET_PDEATHSIG = 1


def die_with_parent(manager_pid: int) -> None:
    """In a worker about to start (between fork and exec): on Linux, the kernel sends it
    SIGTERM — a warm shutdown — when its manager dies, however it dies (SIGKILL included), so
    no worker outlives its manager holding a model's memory. Elsewhere the worker's heartbeat
    notices a changed parent process instead (runtime/heartbeat.py)."""
    if sys.platform != "linux":
        return
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != manager_pid:  # the manager died before the line above: no signal will come
        os.kill(os.getpid(), signal.SIGTERM)

"""The workers a manager runs: one `Child` per worker across its restarts (`spawn` starts its
process, pinned to its GPU if it has one), what a worker process does before it runs
(`die_with_parent`), and the warm stop of them all (`stop_all`)."""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

from contract.keys import Kind
from contract.reasons import safe_text
from contract.registry import ManagedState

log = logging.getLogger("mis.manager")

RESTART_MIN = 1.0
"""Back-off before restarting a crashed worker: doubles from RESTART_MIN up to RESTART_MAX."""


@dataclass
class Child:
    """One worker this manager runs, across its restarts."""

    model: str
    keep_alive: int
    capacity: int | None
    popen: subprocess.Popen[bytes] | None = None
    """Set by `spawn` (Manager._start), before the child joins Manager.children."""
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
    gpu: int | None = None
    """The GPU it is pinned to (managers/gpus.py), chosen at its first start and kept across
    restarts, so a crashed worker comes back where its memory was; None: not pinned."""

    def spawn(self, kind: Kind, manager: str, log_path: Path) -> None:
        """Start its worker process (`python -m worker_<kind>`, an argv list, never a shell),
        its output appended to `log_path`."""
        argv = [sys.executable, "-m", f"worker_{kind}", "--model", self.model, "--keep-alive", str(self.keep_alive)]
        if self.capacity:
            argv += ["--capacity", str(self.capacity)]
        env = {**os.environ, **self.env, "MIS_MANAGER": manager}
        if self.gpu is not None:
            # CUDA's default order (fastest first) may number GPUs unlike nvidia-smi, whose
            # index the manager chose by.
            env.update(CUDA_VISIBLE_DEVICES=str(self.gpu), CUDA_DEVICE_ORDER="PCI_BUS_ID")
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self.log_path = log_path
        with open(log_path, "ab") as out:
            # Its own process group: a Ctrl-C or honcho's SIGTERM to the manager's reaches the
            # worker once, through the manager, and not twice (a second signal is a cold shutdown).
            self.popen = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                process_group=0,
                preexec_fn=functools.partial(die_with_parent, os.getpid()),
            )
        self.state, self.started = ManagedState.RUNNING, time.monotonic()

    def log_tail(self, lines: int = 5) -> str:
        """The end of its log, made safe to show a client (a failed load's reason)."""
        assert self.log_path is not None  # set by Manager._start with popen
        try:
            tail = self.log_path.read_text(errors="replace").strip().splitlines()[-lines:]
        except OSError:
            return "no output"
        return " | ".join(safe_text(line) for line in tail)[-500:]


def stop_all(children: list[Child], wait: float) -> None:
    """Warm shutdown of every worker (they finish their jobs), SIGKILL after `wait` seconds."""
    # Every child has been started (Manager._start): its popen is set.
    running = [
        c
        for c in children
        if c.state == ManagedState.RUNNING and cast("subprocess.Popen[bytes]", c.popen).poll() is None
    ]
    for child in children:
        child.state = ManagedState.STOPPED
    for child in running:
        assert child.popen is not None
        child.popen.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + wait
    while any(cast("subprocess.Popen[bytes]", c.popen).poll() is None for c in running) and time.monotonic() < deadline:
        time.sleep(0.1)
    for child in running:
        assert child.popen is not None
        if child.popen.poll() is None:
            log.warning("worker %d did not stop in %.0f s; killing it", child.popen.pid, wait)
            child.popen.kill()
            child.popen.wait()


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

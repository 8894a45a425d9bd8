"""Managers: one per machine and venv, starting and supervising that machine's workers.

A manager takes load commands from its kind's command stream (contract/commands.py), decides
whether this machine is where the model should go (it fits in the free memory, and no other
live manager is a better place: managers/placement.py), starts
`python -m worker_<kind>` with the same interpreter, and follows the command to `done` when
the worker's registry entry says it serves, or `failed` when it exits first. A worker that
crashes is restarted with back-off; one that exits 0 stopped on purpose (unload, idle
keep-alive, SIGTERM) and is let go. Each manager publishes a registry entry (`ManagerInfo`:
memory, workers) like workers do, which is also how managers see each other for placement.
On a host with GPUs each worker is pinned to one (managers/gpus.py): several GPUs, several
workers on the model's one queue. Unloads do not pass through managers: workers read them in
their heartbeats.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any, cast

import redis
from pydantic import ValidationError

from contract import registry
from contract.commands import (
    GROUP,
    CommandState,
    LoadCommand,
    add_command,
    ensure_group,
    read_unload,
    update_status,
)
from contract.context import Context
from contract.keys import Kind
from contract.modelref import InvalidModelRef, parse_model_ref
from contract.queues import fail_waiting
from contract.registry import (
    ManagedState,
    ManagedWorker,
    ManagerInfo,
    WorkerState,
    live_managers,
    publish_manager,
    remove_manager,
)
from contract.settings import Settings
from contract.sweep import drop_idle
from managers.children import RESTART_MIN, Child, stop_all
from managers.gpus import discover, pick, refresh
from managers.placement import estimate_bytes, machine_memory, place

log = logging.getLogger("mis.manager")

RESTART_MAX = 60.0
"""Back-off before restarting a crashed worker: doubles from MIN up to MAX."""
STABLE_AFTER = 60.0
"""A worker that ran this long before crashing restarts after RESTART_MIN again."""
SHUTDOWN_WAIT = 30.0
"""Seconds a stopping manager gives its workers to finish their jobs before SIGKILL."""
CLAIM_IDLE_MS, CLAIM_INTERVAL = 30_000, 10.0
"""Commands a crashed manager read but never acknowledged are taken over after this idle."""
SWEEP_INTERVAL = 60.0
"""Seconds between sweeps of the queues and metric series of models no longer served."""


# --- the manager ---


class Manager:
    """The loop of one manager process: supervise, heartbeat, take one command, repeat.
    Single-threaded on purpose: every decision sees the children as they are."""

    def __init__(
        self,
        settings: Settings,
        kind: Kind,
        *,
        name: str | None = None,
        capacity: int | None = None,
        replicas: int | None = None,
    ):
        self.settings, self.kind, self.capacity = settings, kind, capacity
        self.gpus = discover(settings)
        # Workers per preloaded model: one per GPU unless told (--replicas, PRELOAD_REPLICAS).
        self.replicas = replicas or settings.preload_replicas or len(self.gpus) or 1
        self.ctx = Context.connect(settings)
        self.conn, self.keys = self.ctx.conn, self.ctx.keys
        host = socket.gethostname()
        self.info = ManagerInfo(
            name=name or f"{kind}-manager.{host}.{os.getpid()}",
            kind=kind,
            host=host,
            pid=os.getpid(),
            started_at=time.time(),
            gpus=[g.index for g in self.gpus],
        )
        self.name = self.info.name
        self.children: list[Child] = []
        self.stopping = threading.Event()
        self.logs = Path(settings.manager_logs_dir)
        self._starts = 0

    # --- main loop ---

    def run(self, preload: list[str]) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda signum, frame: self.stopping.set())
        for model in preload:
            for _ in range(self.replicas):
                self._start(Child(model, keep_alive=-1, capacity=self.capacity))
        log.info("manager %s up (%s workers)", self.name, self.kind)
        next_beat = next_claim = next_sweep = 0.0
        block_ms = int(min(1.0, self.settings.heartbeat_interval) * 1000)
        try:
            while not self.stopping.is_set():
                try:
                    self._supervise()
                    if time.monotonic() >= next_beat:
                        self.publish()
                        next_beat = time.monotonic() + self.settings.heartbeat_interval
                    if time.monotonic() >= next_claim:
                        self._claim_abandoned()
                        next_claim = time.monotonic() + CLAIM_INTERVAL
                    if time.monotonic() >= next_sweep:
                        drop_idle(self.conn, self.keys)
                        next_sweep = time.monotonic() + SWEEP_INTERVAL
                    self._read_commands(block_ms)
                except redis.exceptions.RedisError as exc:
                    log.warning("Redis error (%s); retrying in 1 s", exc)
                    self.stopping.wait(1.0)
        finally:
            self._shutdown()
        return 0

    def publish(self) -> None:
        self.info.mem_total_bytes, self.info.mem_available_bytes = machine_memory(self.settings)
        self.info.workers = [
            ManagedWorker(
                model=c.model,
                pid=c.popen.pid if c.popen else 0,
                state=c.state,
                restarts=c.restarts,
                keep_alive=c.keep_alive,
                gpu=c.gpu,
            )
            for c in self.children
        ]
        publish_manager(self.conn, self.keys, self.info, self.settings.worker_ttl)

    # --- commands ---

    def _read_commands(self, block_ms: int) -> None:
        stream = self.keys.commands(self.kind)
        try:
            # RESP2, undecoded: [[stream, [(entry_id, {field: value}), ...]], ...]
            reply = cast(
                list[list[Any]], self.conn.xreadgroup(GROUP, self.name, {stream: ">"}, count=1, block=block_ms)
            )
        except redis.exceptions.ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            ensure_group(self.conn, self.keys, self.kind)  # first manager, or Redis lost it
            return
        for _, entries in reply or []:
            for entry_id, fields in entries:
                self._handle(entry_id, fields)

    def _claim_abandoned(self) -> None:
        """Take over commands a crashed manager read and never acknowledged."""
        stream = self.keys.commands(self.kind)
        try:
            reply = self.conn.xautoclaim(stream, GROUP, self.name, CLAIM_IDLE_MS, count=10)
        except redis.exceptions.ResponseError:  # no group yet
            return
        for entry_id, fields in reply[1]:
            log.info("taking over abandoned command %s", entry_id)
            self._handle(entry_id, fields or {})  # no fields: trimmed from the stream, acked

    def _handle(self, entry_id, fields: dict) -> None:
        try:
            command = LoadCommand.model_validate_json(fields[b"command"])
        except (KeyError, ValidationError) as exc:
            log.error("dropping malformed command %s: %s", entry_id, exc)
        else:
            self._decide(command)
        self.conn.xack(self.keys.commands(self.kind), GROUP, entry_id)

    def _decide(self, command: LoadCommand) -> None:
        try:
            ref = parse_model_ref(command.model, self.settings.model_roots)
        except InvalidModelRef as exc:
            self._fail(command, str(exc))
            return
        need = estimate_bytes(ref)
        if self.name in command.declined_by:
            # Back to us: the others may not have read it yet, or one is dead but not yet
            # lapsed. Pausing keeps this from spinning until they answer or lapse.
            self.stopping.wait(0.2)
        self.publish()  # our own entry as it is now: memory and workers
        decision = place(self.info, live_managers(self.conn, self.keys, self.kind), command, need)
        if decision.failure:
            self._fail(command, decision.failure)
        elif not decision.start:
            log.info("passing on load of %s (%s)", command.model, "does not fit" if decision.unfit else "placement")
            unfit = command.unfit + [self.name] if decision.unfit else command.unfit
            add_command(
                self.conn,
                self.keys,
                command.model_copy(update={"declined_by": command.declined_by + [self.name], "unfit": unfit}),
            )
        else:
            keep_alive = (
                command.keep_alive if command.keep_alive is not None else self.settings.keep_alive_for(command.model)
            )
            child = Child(
                ref.name, keep_alive, command.capacity or self.capacity, command_id=command.id, env=command.env
            )
            try:
                self._start(child)
            except OSError as exc:
                self._fail(command, f"cannot start a worker: {exc.strerror}")
                return
            assert child.popen is not None  # set by _start
            update_status(
                self.conn, self.keys, command.id, CommandState.STARTING, manager=self.name, worker_pid=child.popen.pid
            )
            self.publish()  # other managers place the next replica knowing about this one

    def _fail(self, command: LoadCommand, message: str) -> None:
        log.warning("load of %s failed: %s", command.model, message)
        update_status(self.conn, self.keys, command.id, CommandState.FAILED, manager=self.name, message=message)
        self._end_waiting_jobs(command.model, message)

    def _end_waiting_jobs(self, model: str, failure: str) -> None:
        """A load that failed, with no other worker serving the model: the jobs waiting for it
        (batch lines and document pages too, which nobody watches) end now, with the reason."""
        serving = [w for w in registry.live_workers(self.conn, self.keys)
                   if w.model == model and w.state not in (WorkerState.ERROR, WorkerState.STOPPING)]  # fmt: skip
        if serving:
            return
        ended = fail_waiting(self.ctx, self.kind, model, "model_unavailable", f"loading model {model!r} failed: "
                             f"{failure}")  # fmt: skip
        if ended:
            log.warning("ended %d job(s) waiting for %s", len(ended), model)

    # --- workers ---

    def _start(self, child: Child) -> None:
        if self.gpus and child.gpu is None:  # a restart keeps its GPU
            pinned = [c.gpu for c in self.children if c.gpu is not None and c is not child]
            child.gpu = pick(refresh(self.gpus), pinned).index
        self._starts += 1
        child.spawn(
            self.kind,
            self.name,
            self.logs / f"{self.kind}-{child.model.replace('/', '_')}-{os.getpid()}-{self._starts}.log",
        )
        assert child.popen is not None  # set by spawn
        if child not in self.children:
            self.children.append(child)
        where = f" on GPU {child.gpu}" if child.gpu is not None else ""
        log.info("started worker %d for %s%s", child.popen.pid, child.model, where)

    def _supervise(self) -> None:
        now = time.monotonic()
        for child in list(self.children):
            assert child.popen is not None  # every child has been started (_start)
            if child.state == ManagedState.RESTARTING and now >= child.restart_at:
                if self._unloaded(child):
                    log.info("not restarting the worker for %s: its model was unloaded", child.model)
                    self.children.remove(child)
                    continue
                child.restarts += 1
                try:
                    self._start(child)
                except OSError as exc:
                    log.error("cannot restart the worker for %s: %s", child.model, exc.strerror)
                    child.restart_at, child.delay = now + child.delay, min(child.delay * 2, RESTART_MAX)
            elif child.state == ManagedState.RUNNING and child.popen.poll() is not None:
                self._exited(child, child.popen.returncode, now)
        if any(c.command_id for c in self.children):
            self._follow_starts()

    def _unloaded(self, child: Child) -> bool:
        unload = read_unload(self.conn, self.keys, child.model)
        return unload is not None and unload.before > child.created_at

    def _exited(self, child: Child, code: int, now: float) -> None:
        assert child.popen is not None  # the process that exited
        if child.command_id:
            message = f"the worker exited (code {code}) before serving: {child.log_tail()}"
            update_status(
                self.conn,
                self.keys,
                child.command_id,
                CommandState.FAILED,
                manager=self.name,
                worker_pid=child.popen.pid,
                message=message,
            )
            self.children.remove(child)
            self._end_waiting_jobs(child.model, message)
        elif code == 0:
            log.info("worker %d for %s stopped", child.popen.pid, child.model)
            self.children.remove(child)
        else:
            if now - child.started > STABLE_AFTER:
                child.delay = RESTART_MIN
            log.warning(
                "worker %d for %s exited with code %d; restarting in %.0f s",
                child.popen.pid,
                child.model,
                code,
                child.delay,
            )
            child.state, child.restart_at = ManagedState.RESTARTING, now + child.delay
            child.delay = min(child.delay * 2, RESTART_MAX)

    def _follow_starts(self) -> None:
        """A started worker's command is done once its registry entry says it serves. One
        whose model failed to load is stopped: a worker run by hand retries its load, but
        whoever sent this command wants an answer, and can send it again."""
        entries = {w.pid: w for w in registry.live_workers(self.conn, self.keys) if w.host == self.info.host}
        given_up: list[Child] = []
        for child in self.children:
            assert child.popen is not None  # every child has been started (_start)
            entry = entries.get(child.popen.pid)
            if not child.command_id or child.state != ManagedState.RUNNING:
                continue
            if entry is not None and entry.serving:
                state, message = CommandState.DONE, ""
            elif time.monotonic() - child.started > self.settings.load_timeout:
                limit = self.settings.load_timeout
                state, message = CommandState.FAILED, f"the model did not load within LOAD_TIMEOUT ({limit:g} s)"
                log.warning("worker %d for %s: %s; killing it", child.popen.pid, child.model, message)
                child.popen.kill()  # a hung load heeds no warm shutdown, and it runs no job
                child.popen.wait()
                given_up.append(child)
            elif entry is None:
                continue
            elif entry.state == WorkerState.ERROR:
                state, message = CommandState.FAILED, f"the model failed to load: {entry.error}"
                log.warning("worker %d for %s: %s; stopping it", child.popen.pid, child.model, message)
                child.popen.terminate()  # exits 0: let go, not restarted
            else:
                continue
            update_status(
                self.conn,
                self.keys,
                child.command_id,
                state,
                manager=self.name,
                worker_pid=child.popen.pid,
                message=message,
            )
            child.command_id = ""
            if state == CommandState.FAILED:
                self._end_waiting_jobs(child.model, message)
        for child in given_up:
            self.children.remove(child)

    def _shutdown(self) -> None:
        stop_all(self.children, SHUTDOWN_WAIT)
        try:
            remove_manager(self.conn, self.keys, self.name)
        except redis.exceptions.RedisError:
            pass
        log.info("manager %s stopped", self.name)

"""Managers as users run them: two `machines` (two managers on one Redis, each reporting a
fixed free memory) place replicas, restart crashed workers, refuse what cannot load, and
workers stop themselves on an unload or an idle keep-alive, exit 0 and stay stopped."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from rq.job import Job, JobStatus

from contract.commands import (
    CommandState,
    LoadCommand,
    command_status,
    request_unload,
    send_load,
    update_status,
)
from contract.keys import Kind, Priority
from contract.payloads import ChatJob, ChatMessage
from contract.queues import JobSpec, enqueue
from contract.registry import ManagerInfo, WorkerState, live_managers, live_workers
from contract.results import ResultStatus, read_result
from contract.settings import Settings
from contract.stream import EventType, StreamReader
from managers.placement import machine_memory, place
from runtime.batching import ADMIT_WAIT

from .support import SLOW, alias, say_hi, wait_until
from .test_cancel import open_stream, read_until

GB = 10**9
MODEL = "mgr-tiny"


@pytest.fixture(scope="module")
def managers(stack, models_dir, api_url, conn, keys):
    alias(models_dir, MODEL, target=SLOW)  # slow enough that a running job outlasts an unload's checks

    def start(name, memory):
        return stack.spawn(
            name,
            [sys.executable, "-m", "worker_text.manager", "--name", name],
            MIS_MANAGER_MEMORY_BYTES=memory,
            MANAGER_LOGS_DIR=stack.logs,
        )

    procs = {"mgr-a": start("mgr-a", 16 * GB), "mgr-b": start("mgr-b", 8 * GB)}
    wait_until(lambda: {m.name for m in live_managers(conn, keys)} >= set(procs), 20, "both managers up")
    yield procs
    for proc in procs.values():
        proc.stop()


def manager(conn, keys, name) -> ManagerInfo | None:
    return next((m for m in live_managers(conn, keys, Kind.TEXT) if m.name == name), None)


def final(conn, keys, command_id, timeout=60):
    def ended():
        status = command_status(conn, keys, command_id)
        return status if status.state in (CommandState.DONE, CommandState.FAILED) else None

    return wait_until(ended, timeout, f"command {command_id} to end", interval=0.2)


def serving_pids(conn, keys, model=MODEL) -> set[int]:
    return {w.pid for w in live_workers(conn, keys) if w.model == model and w.serving}


def all_events(conn, keys, job_id):
    reader, events = StreamReader(conn, keys, job_id), []
    while batch := reader.read():
        events += batch
    return events


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_placement_prefers_fewer_replicas_then_more_memory():
    def info(name, mem, models=()):
        return ManagerInfo(
            name=name,
            kind=Kind.TEXT,
            host="h",
            pid=1,
            mem_available_bytes=mem,
            workers=[{"model": m, "pid": 2, "state": "running"} for m in models],
        )

    a, b = info("a", 16 * GB), info("b", 8 * GB)
    cmd = LoadCommand(id="1", kind=Kind.TEXT, model="m")
    assert place(a, [a, b], cmd, GB).start and not place(b, [a, b], cmd, GB).start
    a_busy = info("a", 16 * GB, ["m"])
    assert place(b, [a_busy, b], cmd, GB).start and not place(a_busy, [a_busy, b], cmd, GB).start
    assert place(a, [a, b], cmd, 10 * GB).start and place(b, [a, b], cmd, 10 * GB).unfit
    assert "does not fit" in place(b, [a, b], cmd.model_copy(update={"unfit": ["a"]}), 20 * GB).failure
    assert machine_memory(Settings())[0] > 0


def test_two_replicas_land_on_two_machines_and_serve(managers, api_url, conn, keys):
    ids = send_load(conn, keys, Kind.TEXT, MODEL, replicas=2)
    statuses = [final(conn, keys, i) for i in ids]
    assert [s.state for s in statuses] == [CommandState.DONE] * 2, [s.message for s in statuses]
    assert {s.manager for s in statuses} == {"mgr-a", "mgr-b"}
    assert serving_pids(conn, keys) == {s.worker_pid for s in statuses}
    a = manager(conn, keys, "mgr-a")
    assert a.mem_available_bytes == 16 * GB and [w.model for w in a.workers] == [MODEL]
    assert say_hi(api_url, MODEL, max_tokens=3).usage.completion_tokens == 3
    entries = [w for w in live_workers(conn, keys) if w.model == MODEL]
    assert {w.manager for w in entries} == {"mgr-a", "mgr-b"}
    assert all(w.rss_bytes > 10**7 and w.keep_alive == 600 for w in entries)
    wait_until(
        lambda: [
            w
            for w in live_workers(conn, keys)
            if w.model == MODEL and w.last_job_at and w.tokens_per_s > 0 and w.jobs_per_min > 0
        ],
        5,
        "rates in the registry",
    )


def test_model_that_cannot_load_fails_and_its_worker_stops(managers, models_dir, conn, keys, ctx):
    broken = models_dir / "mgr-broken"
    broken.mkdir(exist_ok=True)
    (broken / "config.json").write_text("{}")
    # A batch line waiting for the model (nobody watches it): it ends with the load's failure.
    line = enqueue(ctx, JobSpec.chat(ChatJob(model="mgr-broken", messages=[ChatMessage(role="user", content="hi")],
                                             max_tokens=2), Kind.TEXT, priority=Priority.BATCH))  # fmt: skip
    status = final(conn, keys, send_load(conn, keys, Kind.TEXT, "mgr-broken")[0])
    assert status.state == CommandState.FAILED and status.message.startswith("the model failed to load: ")
    assert "/" not in status.message, status.message
    wait_until(lambda: gone(status.worker_pid), 15, "the failed worker to stop")
    assert all(w.model != "mgr-broken" for m in live_managers(conn, keys) for w in m.workers)
    result = wait_until(lambda: (r := read_result(conn, keys, line.id)).final and r, 10, "the waiting line ended")
    assert result.status == ResultStatus.FAILED and result.error["code"] == "model_unavailable"
    assert "failed to load" in result.error["message"]


def test_worker_that_exits_before_serving_fails_with_its_last_words(managers, conn, keys):
    status = final(conn, keys, send_load(conn, keys, Kind.TEXT, MODEL, capacity=999)[0], timeout=20)
    assert status.state == CommandState.FAILED
    assert "exited (code 2) before serving" in status.message
    assert "--capacity must be between 1 and 256" in status.message


def test_invalid_reference_fails(managers, conn, keys):
    status = final(conn, keys, send_load(conn, keys, Kind.TEXT, "../x")[0], timeout=10)
    assert status.state == CommandState.FAILED and "'..'" in status.message


def test_model_that_fits_nowhere_fails(managers, models_dir, conn, keys):
    huge = models_dir / "mgr-huge"
    huge.mkdir(exist_ok=True)
    with open(huge / "model.safetensors", "wb") as f:
        f.truncate(40 * GB)  # sparse: no disk used
    status = final(conn, keys, send_load(conn, keys, Kind.TEXT, "mgr-huge")[0], timeout=10)
    assert status.state == CommandState.FAILED
    assert status.message == "does not fit on any machine (needs 48.00 GB, most free is 14.40 GB)"


def test_crashed_worker_restarts_and_a_lost_machine_leaves_the_other(managers, api_url, conn, keys):
    (first,) = [w.pid for w in manager(conn, keys, "mgr-a").workers if w.model == MODEL]
    os.kill(first, signal.SIGKILL)
    restarted = wait_until(
        lambda: [
            w
            for w in manager(conn, keys, "mgr-a").workers
            if w.restarts == 1 and w.pid != first and w.state == "running"
        ],
        15,
        "the worker restarted",
    )[0]
    wait_until(lambda: restarted.pid in serving_pids(conn, keys), 60, "the restarted worker serving")
    managers["mgr-a"].send(signal.SIGKILL)
    os.kill(restarted.pid, signal.SIGKILL)
    assert say_hi(api_url, MODEL, max_tokens=3).usage.completion_tokens == 3
    wait_until(lambda: manager(conn, keys, "mgr-a") is None, 10, "mgr-a's entry to lapse")


def test_unload_lets_running_jobs_finish_then_the_worker_exits_for_good(managers, api_url, conn, keys):
    (pid,) = [w.pid for w in manager(conn, keys, "mgr-b").workers if w.model == MODEL]
    # Stored: its rq record stays once it has finished, to be read below.
    response, job_id = open_stream(api_url, model=MODEL, max_tokens=2000, store=True)
    read_until(response, lambda line: '"content":"' in line)
    cutoff = request_unload(conn, keys, MODEL, cancel=False)
    wait_until(
        lambda: [w for w in live_workers(conn, keys) if w.pid == pid and w.state == WorkerState.STOPPING],
        5,
        "the worker to start stopping",
    )
    time.sleep(ADMIT_WAIT + 0.5)  # the admission loop has left: the worker drains its engine
    assert Job.fetch(job_id, connection=conn).get_status() == JobStatus.STARTED
    os.kill(pid, signal.SIGTERM)  # what its manager sends when it stops: still a warm shutdown
    assert read_until(response, lambda line: "finish_reason" in line and '"finish_reason":null' not in line)
    wait_until(lambda: Job.fetch(job_id, connection=conn).get_status() == JobStatus.FINISHED, 10, "job finished")
    assert Job.fetch(job_id, connection=conn).ended_at.timestamp() > cutoff  # it ran past the unload
    wait_until(lambda: gone(pid), 15, "the unloaded worker to exit")
    time.sleep(1.5)  # a restart would come after 1 s
    assert manager(conn, keys, "mgr-b").workers == []
    assert not serving_pids(conn, keys)


def test_unload_with_cancel_ends_running_jobs_cancelled(managers, api_url, conn, keys):
    status = final(conn, keys, send_load(conn, keys, Kind.TEXT, MODEL)[0])
    assert status.state == CommandState.DONE, status.message
    response, job_id = open_stream(api_url, model=MODEL, max_tokens=2000)
    read_until(response, lambda line: '"content":"' in line)
    request_unload(conn, keys, MODEL, cancel=True)
    wait_until(lambda: Job.fetch(job_id, connection=conn).get_status() == JobStatus.CANCELED, 15, "job canceled")
    assert all_events(conn, keys, job_id)[-1].type == EventType.CANCELLED
    response.close()
    wait_until(lambda: gone(status.worker_pid), 15, "the unloaded worker to exit")
    time.sleep(1.5)
    assert manager(conn, keys, "mgr-b").workers == []


def test_idle_worker_stops_after_its_keep_alive(managers, conn, keys):
    started = time.monotonic()
    status = final(conn, keys, send_load(conn, keys, Kind.TEXT, MODEL, keep_alive=2)[0])
    assert status.state == CommandState.DONE, status.message
    assert [w.keep_alive for w in manager(conn, keys, "mgr-b").workers] == [2]
    wait_until(lambda: gone(status.worker_pid), 20, "the idle worker to exit")
    time.sleep(1.5)
    assert manager(conn, keys, "mgr-b").workers == []
    assert time.monotonic() - started > 2


def test_sigterm_stops_the_workers_then_the_manager(managers, conn, keys):
    status = final(conn, keys, send_load(conn, keys, Kind.TEXT, MODEL)[0])
    assert status.state == CommandState.DONE, status.message
    assert managers["mgr-b"].stop() == 0
    assert gone(status.worker_pid)
    assert manager(conn, keys, "mgr-b") is None


def test_a_killed_managers_worker_does_not_outlive_it(stack, managers, conn, keys):
    """Hardening II, case 11: a manager SIGKILLed (honcho then stops the rest) once left its
    worker running under init, holding the model's memory; now the kernel stops it."""
    proc = stack.spawn("mgr-orphan", [sys.executable, "-m", "worker_text.manager", "--name", "mgr-orphan",
                                      "--preload", MODEL], MANAGER_LOGS_DIR=stack.logs)  # fmt: skip
    try:
        (pid,) = wait_until(lambda: [w.pid for w in (manager(conn, keys, "mgr-orphan") or ManagerInfo(
            name="-", kind=Kind.TEXT, host="-", pid=0)).workers if w.state == "running"], 30, "its worker")  # fmt: skip
        wait_until(lambda: pid in serving_pids(conn, keys), 60, "the worker serving")
        proc.send(signal.SIGKILL)
        wait_until(lambda: gone(pid), 20, "the orphaned worker to exit")
    finally:
        proc.stop()


def test_a_load_that_never_ends_fails_after_load_timeout(redis_server, conn, keys, ctx, tmp_path):
    """Hardening II, case 6: a load that hangs (a stalled download, a dead mount) left the jobs
    waiting for its model queued for a day. After LOAD_TIMEOUT the manager kills the worker,
    fails the command and ends those jobs. (The hang is a real process that never serves;
    the manager's loop step is called directly.)"""
    from managers.children import Child
    from managers.manager import Manager

    settings = Settings(redis_url=redis_server.url, key_prefix="test:", load_timeout=1)
    boss = Manager(settings, Kind.TEXT, name="mgr-timeout")
    line = enqueue(ctx, JobSpec.chat(ChatJob(model="mgr-hung", messages=[ChatMessage(role="user", content="hi")],
                                             max_tokens=2), Kind.TEXT, priority=Priority.BATCH))  # fmt: skip
    # The status a load command of this model has while its worker starts (as _start writes it).
    update_status(conn, keys, "cmd-hung", CommandState.STARTING, id="cmd-hung", op="load", kind="text",
                  model="mgr-hung", created_at=time.time())  # fmt: skip
    hung = Child("mgr-hung", keep_alive=-1, capacity=None, command_id="cmd-hung", log_path=tmp_path / "hung.log")
    hung.popen = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    boss.children.append(hung)
    boss._follow_starts()
    assert hung.popen.poll() is None and hung in boss.children  # within its time: still loading
    hung.started -= 2
    boss._follow_starts()
    assert hung.popen.poll() is not None and hung not in boss.children
    status = command_status(conn, keys, "cmd-hung")
    assert status.state == CommandState.FAILED and "did not load within LOAD_TIMEOUT (1 s)" in status.message
    result = read_result(conn, keys, line.id)
    assert result.status == ResultStatus.FAILED and result.error["code"] == "model_unavailable"

"""WorkerStatus, the one writer of a worker's registry entry: its transitions, the final
`stopping`, and counters that several threads update under its lock."""

from __future__ import annotations

import threading

from contract.keys import Kind
from contract.registry import WorkerInfo, WorkerState
from runtime.heartbeat import WorkerStatus


def status() -> WorkerStatus:
    return WorkerStatus(WorkerInfo(name="w", model="m", kind=Kind.TEXT, host="h", pid=1, capacity=4))


def test_load_serve_busy_idle():
    s = status()
    assert s.snapshot().state == WorkerState.LOADING
    s.load_failed("OSError: no weights")
    assert (s.snapshot().state, s.snapshot().error) == (WorkerState.ERROR, "OSError: no weights")
    s.loading()
    assert s.snapshot().error == ""
    s.serving(context_length=2048)
    assert (s.snapshot().state, s.snapshot().context_length) == (WorkerState.IDLE, 2048)
    s.jobs_running(3)
    assert (s.snapshot().state, s.snapshot().active_jobs) == (WorkerState.BUSY, 3)
    s.jobs_running(0)
    assert (s.snapshot().state, s.snapshot().active_jobs) == (WorkerState.IDLE, 0)


def test_stopping_is_final():
    s = status()
    s.serving(context_length=10)
    s.jobs_running(2)
    assert s.stopping() and not s.stopping()  # the second call finds it stopping already
    s.jobs_running(0)  # a job ending during the drain
    s.serving(context_length=10)
    assert s.snapshot().state == WorkerState.STOPPING and s.snapshot().active_jobs == 0


def test_counters_from_many_threads_add_up():
    s = status()

    def end_jobs():
        for _ in range(1000):
            s.job_ended(tokens=2)

    threads = [threading.Thread(target=end_jobs) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    info = s.sample_rates()
    assert (info.jobs_done, info.tokens_generated) == (4000, 8000) and info.last_job_at > 0


def test_snapshots_are_copies():
    s = status()
    snap = s.snapshot()
    snap.state = WorkerState.BUSY
    assert s.snapshot().state == WorkerState.LOADING
    assert s.renamed("w2") == "w" and s.snapshot().name == "w2"

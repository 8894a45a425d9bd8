"""Several GPUs on one host (managers/gpus.py): nvidia-smi's output parsed, the GPUs a manager
may use, the GPU each new worker is pinned to — and a real manager on this machine given two
GPUs (MANAGER_GPUS=0,1, a stand-in nvidia-smi for their free memory) that runs one worker per
GPU on the model's one queue. On a CPU MLX ignores CUDA_VISIBLE_DEVICES, so the workers run."""

from __future__ import annotations

import os
import signal
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from pydantic import ValidationError

from contract.commands import CommandState, send_load
from contract.keys import Kind
from contract.registry import live_workers
from contract.settings import Settings
from managers.gpus import Gpu, parse_smi, pick, query_smi, select, visible

from .support import SLOW, alias, client_for, wait_until
from .test_managers import final, gone, manager

H200 = "0, GPU-4c5c250a-5e43-2402-84c2-4e8d370a4e74, 143771, 143156\n"
"""What nvidia-smi printed on a one-GPU H200 host for managers/gpus.py's QUERY."""
THREE = (
    "0, GPU-aaaa1111-0000-0000-0000-000000000000, 81559, 60000\n"
    "1, GPU-bbbb2222-0000-0000-0000-000000000000, 81559, 50000\n"
    "2, GPU-bbbb3333-0000-0000-0000-000000000000, 81559, 90000\n"
)


# --- units ---


def test_parse_nvidia_smi_output():
    assert parse_smi(H200) == [Gpu(0, "GPU-4c5c250a-5e43-2402-84c2-4e8d370a4e74", 143771, 143156)]
    assert [(g.index, g.free_mib) for g in parse_smi(THREE)] == [(0, 60000), (1, 50000), (2, 90000)]
    # MIG mode prints [N/A] for memory; warnings and blank lines are no GPUs; order is by index.
    odd = "\n1, GPU-b, [N/A], [N/A]\nWARNING: infoROM is corrupted\n0, GPU-a, 1024, 512\n"
    assert parse_smi(odd) == [Gpu(0, "GPU-a", 1024, 512), Gpu(1, "GPU-b", None, None)]
    assert parse_smi("") == [] and parse_smi("No devices were found") == []


def test_cuda_visible_devices_narrows_as_cuda_reads_it():
    gpus = parse_smi(THREE)
    assert visible(None, gpus) is None  # unset: all
    assert visible("", gpus) == [] and visible("-1", gpus) == []  # every GPU hidden
    assert visible("2,0", gpus) == [2, 0]
    assert visible("GPU-aaaa", gpus) == [0]  # a unique prefix of a UUID
    assert visible("GPU-bbbb", gpus) == []  # ambiguous: CUDA stops there
    assert visible("1,7,0", gpus) == [1] and visible("1,MIG-x,0", gpus) == [1]  # up to the first it cannot use
    assert visible("3,5", []) == [3, 5]  # no nvidia-smi: indices taken on trust


def test_the_gpus_a_manager_uses():
    smi = parse_smi(THREE)
    assert [g.index for g in select("auto", None, smi)] == [0, 1, 2]
    assert select("auto", None, None) == []  # no nvidia-smi (macOS, a CPU host): no pinning
    assert select("none", None, smi) == []
    assert [g.index for g in select("0,1", None, smi)] == [0, 1]
    assert [g.index for g in select("0,5", None, smi)] == [0]  # no GPU 5 here
    assert select("0,1", None, None) == [Gpu(0), Gpu(1)]  # free memory unknown
    assert [g.index for g in select("auto", "GPU-bbbb3333,1", smi)] == [1, 2]
    assert [g.index for g in select("0,1", "1,2", smi)] == [1]


def test_placement_fewest_workers_then_most_free_then_lowest_index():
    gpus = parse_smi(THREE)
    assert pick(gpus, []).index == 2  # most free
    assert pick(gpus, [2]).index == 0  # a worker there already: the next most free
    assert pick(gpus, [2, 0]).index == 1
    assert pick(gpus, [2, 0, 1]).index == 2  # one each: most free again
    assert pick(gpus[:2], [0, 1]).index == 0  # a second model on a two-GPU manager: most free
    assert pick([Gpu(1), Gpu(0)], []).index == 0  # unknown memory: equal, lowest index
    assert pick([Gpu(0), Gpu(1)], [0]).index == 1


def test_manager_gpus_setting():
    assert Settings().manager_gpus == "auto" and Settings().preload_replicas == 0
    assert Settings(manager_gpus=" 1, 0,1 ").manager_gpus == "0,1"
    assert Settings(manager_gpus="NONE").manager_gpus == "none" and Settings(manager_gpus="").manager_gpus == "auto"
    for bad in ("x", "0,-1", ","):
        with pytest.raises(ValidationError, match="MANAGER_GPUS must be"):
            Settings(manager_gpus=bad)


def test_workers_per_preloaded_model(redis_server, monkeypatch):
    """One per GPU by default; PRELOAD_REPLICAS, then --replicas, say otherwise; 1 without GPUs."""
    from managers import gpus
    from managers.manager import Manager

    monkeypatch.setattr(gpus, "query_smi", lambda: parse_smi(THREE))

    def manager_of(replicas=None, **settings):
        # CUDA_VISIBLE_DEVICES=None: the host's own value must not narrow these GPUs.
        env = Settings(redis_url=redis_server.url, key_prefix="test:", CUDA_VISIBLE_DEVICES=None, **settings)
        return Manager(env, Kind.TEXT, name="mgr-replicas", replicas=replicas)

    assert manager_of().replicas == 3 and manager_of().info.gpus == [0, 1, 2]
    assert manager_of(manager_gpus="0,2").replicas == 2
    assert manager_of(manager_gpus="0,2", preload_replicas=4).replicas == 4
    assert manager_of(3, manager_gpus="0,2", preload_replicas=4).replicas == 3
    assert manager_of(manager_gpus="none").replicas == 1 and manager_of(manager_gpus="none").info.gpus == []
    monkeypatch.setattr(gpus, "query_smi", lambda: None)  # a CPU host
    assert manager_of().replicas == 1 and manager_of().gpus == []


# --- a manager with two GPUs, end to end ---

MODEL, OTHER = "gpu-tiny", "gpu-tiny-2"
real = query_smi()


@pytest.fixture(scope="module")
def fake_smi(tmp_path_factory) -> Path:
    """A stand-in nvidia-smi that prints gpus.csv beside it, so a test sets free memory."""
    folder = tmp_path_factory.mktemp("fake-smi")
    (folder / "gpus.csv").write_text(THREE)
    script = folder / "nvidia-smi"
    script.write_text('#!/bin/sh\nexec cat "$(dirname "$0")/gpus.csv"\n')
    script.chmod(0o755)
    return folder


@pytest.fixture(scope="module")
def gpu_manager(stack, models_dir, fake_smi, conn, keys):
    alias(models_dir, MODEL, target=SLOW)  # slow enough that a worker is busy while the next chat arrives
    alias(models_dir, OTHER)
    proc = stack.spawn(
        "mgr-gpus",
        [sys.executable, "-m", "worker_text.manager", "--name", "mgr-gpus", "--preload", MODEL, "--capacity", "1"],
        MANAGER_GPUS="0,1",
        CUDA_VISIBLE_DEVICES="0,1,2",  # set, so the host's own value cannot narrow the test's GPUs
        PATH=f"{fake_smi}{os.pathsep}{os.environ['PATH']}",
        MANAGER_LOGS_DIR=stack.logs,
    )

    def both_serving():
        entry = manager(conn, keys, "mgr-gpus")
        serving = {w.pid for w in live_workers(conn, keys) if w.model == MODEL and w.serving}
        return entry if entry and len(entry.workers) == 2 and {w.pid for w in entry.workers} <= serving else None

    try:
        wait_until(both_serving, 120, "two workers of the preloaded model serving")
    except TimeoutError:
        raise TimeoutError(proc.log()) from None
    yield proc
    assert proc.stop() == 0


def environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode(errors="replace").partition("=")[::2] for item in raw if item)


def gpu_of(conn, keys, model=MODEL) -> dict[int, int | None]:
    """pid → GPU of the manager's running workers of `model`."""
    return {w.pid: w.gpu for w in manager(conn, keys, "mgr-gpus").workers if w.model == model and w.state == "running"}


end_to_end = pytest.mark.skipif(
    sys.platform != "linux" or (real is not None and len(real) < 2),
    reason="reads /proc; a host with fewer than two real GPUs cannot run workers pinned to GPU 1",
)


@end_to_end
def test_preload_starts_one_worker_per_gpu_each_pinned(gpu_manager, api_url, conn, keys):
    entry = manager(conn, keys, "mgr-gpus")
    assert entry.gpus == [0, 1]
    pinned = gpu_of(conn, keys)
    assert sorted(pinned.values()) == [0, 1]
    for pid, gpu in pinned.items():
        env = environ(pid)
        assert env["CUDA_VISIBLE_DEVICES"] == str(gpu) and env["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
    status = requests.get(api_url + "/admin/status", timeout=10).json()
    assert {w["pid"]: w["gpu"] for w in status["workers"] if w["model"] == MODEL} == pinned


@end_to_end
def test_both_workers_serve_the_one_queue(gpu_manager, api_url, conn, keys):
    pids = set(gpu_of(conn, keys))
    before = {w.pid: w.jobs_done for w in live_workers(conn, keys) if w.pid in pids}

    def chat(i: int) -> int:
        # Different prompts: prefix routing must not steer them to one worker.
        answer = client_for(api_url).chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": f"count to {i}"}], max_tokens=16, temperature=0
        )
        return answer.usage.completion_tokens

    with ThreadPoolExecutor(6) as pool:
        assert list(pool.map(chat, range(6))) == [16] * 6

    def counted():
        done = {w.pid: w.jobs_done - before[w.pid] for w in live_workers(conn, keys) if w.pid in pids}
        return done if sum(done.values()) >= 6 else None

    done = wait_until(counted, 10, "the workers' job counts")
    assert all(n > 0 for n in done.values()), done


@end_to_end
def test_a_crashed_worker_restarts_on_its_gpu(gpu_manager, conn, keys):
    (victim,) = [pid for pid, gpu in gpu_of(conn, keys).items() if gpu == 1]
    os.kill(victim, signal.SIGKILL)

    def restarted():
        workers = [w for w in manager(conn, keys, "mgr-gpus").workers if w.model == MODEL and w.restarts == 1]
        return workers if workers and workers[0].state == "running" and workers[0].pid != victim else None

    (worker,) = wait_until(restarted, 15, "the worker restarted")
    assert gone(victim) and worker.gpu == 1
    assert environ(worker.pid)["CUDA_VISIBLE_DEVICES"] == "1"
    assert sorted(gpu_of(conn, keys).values()) == [0, 1]


@end_to_end
def test_a_second_model_goes_to_the_gpu_with_most_free_memory_now(gpu_manager, fake_smi, conn, keys):
    # GPU 2 is freest, but not this manager's; of its own, GPU 1 now has more free than GPU 0
    # (at start-up GPU 0 had more: the manager asks again at each start).
    (fake_smi / "gpus.csv").write_text(THREE.replace("60000", "10000").replace("50000", "70000"))
    status = final(conn, keys, send_load(conn, keys, Kind.TEXT, OTHER)[0])
    assert status.state == CommandState.DONE and status.manager == "mgr-gpus", status.message
    assert list(gpu_of(conn, keys, OTHER).values()) == [1]
    assert environ(status.worker_pid)["CUDA_VISIBLE_DEVICES"] == "1"

"""GPU selection and the machine-wide per-GPU lock (CPU only: the lock never touches a GPU)."""
import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from avo import PROJECT_ROOT
from avo.evaluate import gpu as gpumod
from avo.evaluate.gpu import GpuBusyError, GpuLock, gpu_slot, holder, parse_cuda_visible_devices, run_gpus, visible_gpus

# A holder process: takes a GPU of argv[2] (JSON list), prints "acquired <gpu> <time>", holds it argv[3]
# seconds ("stdin": until a line arrives on its stdin), prints "released <gpu> <time>" (wall-clock times are
# comparable across processes).
HOLDER = textwrap.dedent("""
    import json, sys, time
    from avo.evaluate.gpu import GpuLock
    lock = GpuLock(json.loads(sys.argv[2]), lock_dir=sys.argv[1], description="test holder", poll_s=0.02)
    gpu = lock.acquire()
    print("acquired", gpu, time.time(), flush=True)
    if sys.argv[3] == "stdin":
        sys.stdin.readline()
    else:
        time.sleep(float(sys.argv[3]))
    t = time.time()
    lock.release()
    print("released", gpu, t, flush=True)
""")


def spawn(lock_dir, gpus, hold_s):
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    return subprocess.Popen([sys.executable, "-c", HOLDER, str(lock_dir), json.dumps(gpus), str(hold_s)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)


def let_go(proc):
    """Tell a holder started with hold_s="stdin" to release."""
    proc.stdin.write("release\n")
    proc.stdin.flush()


def read_event(proc, timeout=30.0):
    """The next "<event> <gpu> <time>" line of a holder."""
    line = proc.stdout.readline()
    assert line, f"holder exited early with {proc.wait(timeout)}"
    what, gpu, t = line.split()
    return what, int(gpu), float(t)


def test_two_processes_on_one_gpu_serialize(tmp_path):
    first = spawn(tmp_path, [0], "stdin")
    try:
        assert read_event(first)[0] == "acquired"
        second = spawn(tmp_path, [0], 0.0)
        try:
            time.sleep(1.0)  # the second has started and is waiting
            told = time.time()
            let_go(first)
            _, _, released = read_event(first)
            what, gpu, acquired = read_event(second)
            assert (what, gpu) == ("acquired", 0)
            # The second waited for the first: it got the GPU only after the release, not at start-up.
            assert acquired >= released >= told
        finally:
            assert second.wait(30) == 0
    finally:
        assert first.wait(30) == 0


def test_two_gpus_two_holders_at_once(tmp_path):
    a = spawn(tmp_path, [0, 1], "stdin")
    try:
        assert read_event(a)[:2] == ("acquired", 0)
        b = spawn(tmp_path, [0, 1], "stdin")
        try:
            # GPU 0 busy: the next one of the list, without waiting; both are held at once.
            assert read_event(b)[:2] == ("acquired", 1)
            let_go(a)
            let_go(b)
            assert read_event(a)[0] == "released"
            assert read_event(b)[0] == "released"
        finally:
            assert b.wait(30) == 0
    finally:
        assert a.wait(30) == 0


def test_killed_holder_frees_the_lock(tmp_path):
    proc = spawn(tmp_path, [3], 300.0)
    try:
        assert read_event(proc)[:2] == ("acquired", 3)
        assert holder(3, tmp_path)["pid"] == proc.pid
        assert holder(3, tmp_path)["what"] == "test holder"
        with pytest.raises(GpuBusyError, match=rf"pid {proc.pid} \(test holder"):
            GpuLock([3], lock_dir=tmp_path).acquire(timeout_s=0.3)
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(30) == -signal.SIGKILL
        # flock dies with its holder: no cleanup, no stale lock.
        with gpu_slot([3], lock_dir=tmp_path, timeout_s=5.0) as gpu:
            assert gpu == 3
            assert holder(3, tmp_path)["pid"] == os.getpid()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_in_process_locks_exclude_each_other_and_release(tmp_path):
    a = GpuLock([0], lock_dir=tmp_path, description="a")
    assert a.acquire() == 0 and a.held
    b = GpuLock([0], lock_dir=tmp_path)
    with pytest.raises(GpuBusyError):
        b.acquire(timeout_s=0)
    with pytest.raises(RuntimeError, match="already holds GPU 0"):
        a.acquire()
    a.release()
    assert not a.held and a.gpu is None
    assert holder(0, tmp_path) is None  # truncated on release
    assert b.acquire(timeout_s=0) == 0
    b.release()
    b.release()  # idempotent


def test_context_manager_and_env_lock_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("AVO_GPU_LOCK_DIR", str(tmp_path / "locks"))
    with GpuLock([5, 6]) as gpu:
        assert gpu == 5
        assert (tmp_path / "locks" / "gpu5.lock").exists()
        with gpu_slot([5, 6], timeout_s=0) as other:
            assert other == 6
    assert oct((tmp_path / "locks").stat().st_mode & 0o7777) == oct(0o1777)


def test_waiting_is_logged_once_with_the_holder(tmp_path, caplog):
    proc = spawn(tmp_path, [0], "stdin")
    try:
        assert read_event(proc)[0] == "acquired"
        threading.Timer(0.5, let_go, (proc,)).start()
        with caplog.at_level(logging.INFO, logger="avo.evaluate.gpu"):
            with gpu_slot([0], lock_dir=tmp_path, poll_s=0.02) as gpu:
                assert gpu == 0
        waits = [r.getMessage() for r in caplog.records if r.getMessage().startswith("waiting for")]
        assert len(waits) == 1, waits
        assert f"GPU 0 held by pid {proc.pid} (test holder" in waits[0]
    finally:
        proc.wait(30)


@pytest.mark.parametrize("value,expected", [
    ("0", ([0], True)),
    ("2,3", ([2, 3], True)),
    (" 1 , 0 ", ([1, 0], True)),
    ("", ([], True)),
    ("0,-1,2", ([0], True)),      # CUDA stops at the first invalid entry
    ("1,x,2", ([1], True)),
    ("0,0", ([0], True)),
    ("GPU-5e3b2c1a", ([], False)),
    ("0,MIG-abc", ([0], False)),
])
def test_parse_cuda_visible_devices(value, expected):
    assert parse_cuda_visible_devices(value) == expected


SMI = ((0, "GPU-aaaa1111-0000", ()), (1, "GPU-bbbb2222-0000", ("MIG-cccc3333",)), (2, "GPU-dddd4444-0000", ()))


def test_visible_gpus(monkeypatch):
    monkeypatch.setattr(gpumod, "_nvidia_smi_list", lambda: SMI)
    monkeypatch.setattr(gpumod, "_torch_device_count", lambda: 7)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,0")
    assert visible_gpus() == [2, 0]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert visible_gpus() == []
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-dddd,0")  # UUID prefixes, mapped through nvidia-smi
    assert visible_gpus() == [2, 0]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "MIG-cccc3333")  # a MIG slice locks its whole GPU
    assert visible_gpus() == [1]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-ffff")  # unknown UUID: CUDA sees nothing either
    assert visible_gpus() == []
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert visible_gpus() == [0, 1, 2]
    # No nvidia-smi: torch's count.
    monkeypatch.setattr(gpumod, "_nvidia_smi_list", lambda: None)
    assert visible_gpus() == list(range(7))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-dddd")
    assert visible_gpus() == list(range(7))


def test_nvidia_smi_parsing(monkeypatch):
    out = ("GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-aaaa1111-2222-3333-4444-555566667777)\n"
           "GPU 1: NVIDIA A100-SXM4-40GB (UUID: GPU-bbbb1111-2222-3333-4444-555566667777)\n"
           "  MIG 1g.5gb      Device  0: (UUID: MIG-cccc1111-2222-3333-4444-555566667777)\n")

    def fake_run(*args, **kwargs):
        return subprocess.CompletedProcess(args, 0, out, "")

    gpumod._nvidia_smi_list.cache_clear()
    monkeypatch.setattr(gpumod.subprocess, "run", fake_run)
    try:
        smi = gpumod._nvidia_smi_list()
        assert [i for i, _, _ in smi] == [0, 1]
        assert smi[1][2] == ("MIG-cccc1111-2222-3333-4444-555566667777",)
    finally:
        gpumod._nvidia_smi_list.cache_clear()


def test_run_gpus(monkeypatch):
    monkeypatch.setattr(gpumod, "visible_gpus", lambda: [0, 1])
    assert run_gpus(None) == [0, 1]
    assert run_gpus([3, 1, 3]) == [3, 1]
    with pytest.raises(ValueError, match="non-negative"):
        run_gpus([-1])
    with pytest.raises(ValueError, match="names no GPU"):
        run_gpus([])
    monkeypatch.setattr(gpumod, "visible_gpus", lambda: [])
    with pytest.raises(ValueError, match="no GPU is visible"):
        run_gpus(None)

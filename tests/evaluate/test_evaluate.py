"""The facade: child process, private copy, hard timeout, signals, usage errors."""
import os
import time

import pytest
import torch

from avo.evaluate import EvalSettings, evaluate, resolve_device


def test_correct_program_end_to_end_on_a_private_copy(make_program, task, grid, settings):
    prog = make_program("correct_writes")
    res = evaluate(prog, task, grid, settings)
    assert (res["stage"], res["correct"], res["error"]) == ("done", True, None)
    assert res["score"] > 0 and all(c["tflops"] > 0 for c in res["configs"])
    assert (res["grid"], res["task"], res["flags"]) == ("t", "gqa_test", [])
    # On a CPU the SDPA math kernel stands in as the baseline, timed by the same protocol.
    assert all(set(b) == {"sdpa_cpu"} and b["sdpa_cpu"]["tflops"] > 0 for b in res["baselines"].values())
    assert set(res["speedups"]) == {"sdpa_cpu"}
    assert all(set(c["speedup"]) == {"sdpa_cpu"} for c in res["configs"])
    assert res["device"]["kind"] == "cpu" and res["device"]["python"]
    assert "[avo worker" in res["log"] and "timing" in res["log"]
    assert 0 < res["elapsed_s"] < settings.timeout_s
    assert not (prog / "scratch.txt").exists()  # the program wrote into its copy only
    assert not (prog / "__pycache__").exists()


def test_program_error_names_the_original_directory(make_program, task, grid, settings):
    prog = make_program("raises")
    res = evaluate(prog, task, grid, settings)
    assert res["stage"] == "correctness_small" and not res["correct"] and res["score"] == 0.0
    assert "RuntimeError: boom: tile too large" in res["error"]
    assert f'File "{prog / "kernel.py"}"' in res["error"]


def _gone(pid: int) -> bool:
    """True once `pid` no longer exists or is a zombie (dead, waiting to be reaped by init)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def _group_gone(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    # Members may linger as zombies for a moment until init reaps them.
    return all(_gone(int(p)) for p in os.listdir("/proc") if p.isdigit() and _pgid_of(int(p)) == pgid)


def _pgid_of(pid: int):
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


def _wait_for(cond, timeout=5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.05)
    return cond()


def test_hang_is_killed_with_its_whole_process_group(make_program, task, grid, settings, tmp_path):
    pid_file = tmp_path / "pids.txt"
    prog = make_program("hangs", PID_FILE=repr(str(pid_file)))
    settings.timeout_s = 6.0  # room for the worker to import torch on a loaded machine, then hang
    start = time.monotonic()
    res = evaluate(prog, task, grid, settings)
    elapsed = time.monotonic() - start
    assert 6.0 <= elapsed < 20.0
    assert res["stage"] == "correctness_small" and not res["correct"] and res["score"] == 0.0
    assert res["error"].startswith("timed out after 6 s during stage correctness_small (B1_S1_H4/2_D32")
    assert "the worker's process group was killed" in res["error"]
    grandchild, pgid = map(int, pid_file.read_text().split())
    assert pgid != os.getpgid(0)  # the worker had its own group
    assert _wait_for(lambda: _gone(grandchild)), "the sleeping grandchild survived the timeout"
    assert _wait_for(lambda: _group_gone(pgid)), "members of the worker's process group survived"


def test_worker_dies_with_a_run_killed_by_sigkill(make_program, tmp_path):
    """kill -9 of the run: its evaluation worker must not go on (timing on the GPU next to a restarted run)."""
    import signal
    import subprocess
    import sys

    pid_file = tmp_path / "pids.txt"
    prog = make_program("hangs", PID_FILE=repr(str(pid_file)))
    script = (
        "from avo.evaluate import EvalSettings, evaluate\n"
        "from avo.task import Grid, GridPoint, Task\n"
        "task = Task(name='t', heads_q=4, heads_kv=2, head_dim=32, causal=True, dtype='float16')\n"
        "grid = Grid(name='t', configs=[GridPoint(1, 64)], dtype='float16', max_heads_kv=2)\n"
        f"evaluate({str(prog)!r}, task, grid, EvalSettings(device='cpu', trials=1, warmup=1, repeats=2, "
        "odd_seqlens=[37], timeout_s=120.0))\n")
    run = subprocess.Popen([sys.executable, "-c", script])
    try:
        assert _wait_for(lambda: pid_file.exists() and pid_file.read_text().strip(), timeout=60)
        _, worker = map(int, pid_file.read_text().split())  # the worker leads its own process group
        assert not _gone(worker)
        run.send_signal(signal.SIGKILL)
        run.wait()
        assert _wait_for(lambda: _gone(worker)), "the worker outlived the run"
    finally:
        run.kill()
        run.wait()
        if pid_file.exists() and pid_file.read_text().strip():
            try:  # the program's sleeping grandchild (the worker's group outlives the worker)
                os.killpg(int(pid_file.read_text().split()[1]), signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_worker_killed_by_a_signal(make_program, task, grid, settings):
    res = evaluate(make_program("kills_itself"), task, grid, settings)
    assert res["stage"] == "correctness_small" and not res["correct"]
    assert res["error"].startswith("worker died with signal 9 (SIGKILL) during stage correctness_small")
    assert "last output of the worker" in res["error"] and "[avo worker" in res["error"]
    assert res["device"]["kind"] == "cpu"


def test_static_refusal_needs_no_worker(make_program, task, grid, settings):
    start = time.monotonic()
    res = evaluate(make_program("sdpa"), task, grid, settings)
    assert time.monotonic() - start < 1.0
    assert res["stage"] == "static" and not res["correct"] and res["score"] == 0.0
    assert "kernel.py:5:" in res["error"] and "scaled_dot_product_attention" in res["error"]


def test_usage_errors_raise_value_error(tmp_path, task, grid, settings):
    with pytest.raises(ValueError, match="has no kernel.py: a program is a directory with kernel.py defining "
                                         r"attention\(q, k, v, \*, causal, sm_scale\)"):
        evaluate(tmp_path, task, grid, settings)
    with pytest.raises(ValueError, match="does not exist"):
        evaluate(tmp_path / "missing", task, grid, settings)


def test_resolve_device():
    assert resolve_device(EvalSettings(device="cpu")) == "cpu"
    assert resolve_device(EvalSettings(device="auto")) == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="device='tpu'"):
        resolve_device(EvalSettings(device="tpu"))


@pytest.mark.gpu
def test_evaluation_waits_for_the_gpu_lock(make_program, task, grid, tmp_path, monkeypatch):
    """A GPU held by another timing job (here: this test) is not timed on until it is released."""
    import threading

    from avo.evaluate.gpu import GpuLock

    monkeypatch.setenv("AVO_GPU_LOCK_DIR", str(tmp_path / "locks"))
    settings = EvalSettings(device="cuda", gpus=[0], trials=1, warmup=1, repeats=3, odd_seqlens=[37], baselines=[])
    lock = GpuLock([0])
    lock.acquire()
    threading.Timer(3.0, lock.release).start()
    start = time.monotonic()
    res = evaluate(make_program("correct"), task, grid, settings)
    assert res["correct"] and time.monotonic() - start >= 3.0

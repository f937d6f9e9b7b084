"""The evaluator facade: `evaluate(program_dir, task, grid, settings)` -> result dict (see avo.evaluate.result).

Each evaluation runs `python -m avo.evaluate.worker` in a child process of its own process group, on a private
copy of the program, with a hard wall-clock limit after which the whole group (grandchildren included) is
killed. A crash, a hang or a poisoned CUDA context costs the candidate, never the caller: `evaluate` never
raises for a broken program, only for a usage error (ValueError).
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Optional

from avo import PROJECT_ROOT
from avo.evaluate import checks
from avo.evaluate.gpu import gpu_slot, run_gpus
from avo.evaluate.result import device_info, fail, new_result, trim
from avo.evaluate.settings import EvalSettings
from avo.program import check_program_dir, copy_program
from avo.task import Grid, Task, grid_shapes

__all__ = ["evaluate", "bench", "resolve_device", "EvalSettings"]

# Grace after SIGKILL for the kernel to reap the group before we read the files the worker left.
_KILL_WAIT_S = 10.0
# How often the facade looks whether the worker has exited (bounds the latency added to each evaluation).
_POLL_S = 0.02


def resolve_device(settings: EvalSettings) -> str:
    """"cpu" or "cuda" for `settings.device` ("auto": CUDA when torch sees a GPU)."""
    device = settings.device
    if device == "auto":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    if device not in ("cpu", "cuda"):
        raise ValueError(f"evaluator device={device!r} is not one of 'auto', 'cpu', 'cuda'")
    return device


def _check_usage(program_dir: Path, grid: Grid) -> None:
    check_program_dir(program_dir)  # a ProgramError (a ValueError) naming the contract
    if not grid.configs:
        raise ValueError(f"benchmark grid {grid.name!r} has no configurations")


def _worker_env(device: str, gpu: Optional[int]) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PROJECT_ROOT), env.get("PYTHONPATH")) if p)
    env["PYTHONUNBUFFERED"] = "1"  # what the worker printed before dying must be in the log
    env["AVO_PARENT_PID"] = str(os.getpid())  # the worker dies with the run (see worker.die_with_parent)
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = str(gpu)
    if device == "cpu":
        env["TRITON_INTERPRET"] = "1"
        # One BLAS/OpenMP thread: the interpreter's many small numpy matmuls run 2-3x faster than with
        # threads spinning on a shared CPU, and CPU timings of concurrent evaluations stay stable.
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            env.setdefault(var, "1")
    else:
        env.pop("TRITON_INTERPRET", None)  # an inherited interpreter flag would time the interpreter
    return env


def _signal_name(num: int) -> str:
    try:
        return signal.Signals(num).name
    except ValueError:
        return f"signal {num}"


def _wait_unreaped(pid: int, deadline: float) -> bool:
    """Wait until child `pid` exits or the monotonic `deadline` passes, without reaping it; True if it exited."""
    while True:
        try:
            if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
                return True
        except ChildProcessError:  # already reaped elsewhere: it has exited
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(_POLL_S)


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass  # the group is already gone


def evaluate(program_dir, task: Task, grid: Grid, settings: EvalSettings, *, gpu: Optional[int] = None,
             incumbent: Optional[Path] = None, bench_reps: int = 0) -> dict:
    """Evaluate the program in `program_dir` on `grid` for `task`; return the result dict.

    `gpu` pins the worker with CUDA_VISIBLE_DEVICES (None: the first free GPU of `settings.gpus`, default all
    visible); the GPU's machine-wide lock is held while the worker runs, so concurrent runs never time on a
    shared GPU.
    `incumbent` (a program directory, e.g. the best committed version) is timed interleaved with the
    candidate in the same worker; its figures come back under "incumbent", so a decision that depends on
    the difference of the two compares like with like. `bench_reps` adds that many full timing passes of
    program and baselines (see `bench`). Raises ValueError only for usage errors; every failure of the
    program is a result with correct=False.
    """
    start = time.monotonic()
    program_dir = Path(program_dir).resolve()
    _check_usage(program_dir, grid)
    device = resolve_device(settings)
    shapes = grid_shapes(task, grid)
    limit = settings.log_chars

    # Refuse forbidden sources before paying for a process and a torch import.
    static = checks.static_error(program_dir)
    if static:
        result = fail(new_result(task, grid, shapes, device_info(device, query_gpu=False)), "static", static,
                      limit)
        result["elapsed_s"] = time.monotonic() - start
        return result

    # ignore_cleanup_errors: a program that left unremovable files must not turn into an exception here.
    with tempfile.TemporaryDirectory(prefix="avo-eval-", ignore_cleanup_errors=True) as tmp:
        tmp = Path(tmp)
        copy = tmp / "program"
        copy_program(program_dir, copy)
        incumbent_copy = None
        if incumbent is not None and Path(incumbent).joinpath("kernel.py").is_file():
            incumbent_copy = tmp / "incumbent"
            copy_program(Path(incumbent), incumbent_copy)
        request = {
            "program_dir": str(copy),
            "incumbent_dir": str(incumbent_copy) if incumbent_copy else None,
            "bench_reps": bench_reps,
            "task": asdict(task),
            "grid": asdict(grid),
            "settings": asdict(settings),
            "device": device,
            "progress_path": str(tmp / "progress.json"),
            "result_path": str(tmp / "result.json"),
        }
        (tmp / "request.json").write_text(json.dumps(request))
        log_path = tmp / "worker.log"
        # One timing job per GPU across every process on the box: hold the GPU's lock for the whole worker.
        slot = (gpu_slot(run_gpus(settings.gpus) if gpu is None else [gpu],
                         description=f"avo evaluate {program_dir.name} ({task.name}/{grid.name})")
                if device == "cuda" else contextlib.nullcontext(gpu))
        with slot as gpu, open(log_path, "wb") as log:
            # The worker runs in the program copy (where relative writes belong) with -P, so that directory
            # is not put on sys.path ahead of avo and a program file named like one of our modules cannot
            # shadow it. Python 3.10 has no -P: there the worker runs in the private parent directory.
            safe_path = sys.version_info >= (3, 11)
            proc = subprocess.Popen(
                [sys.executable, *(["-P"] if safe_path else []), "-m", "avo.evaluate.worker",
                 str(tmp / "request.json")],
                cwd=copy if safe_path else tmp, env=_worker_env(device, gpu), stdin=subprocess.DEVNULL,
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            try:
                timed_out = not _wait_unreaped(proc.pid, start + settings.timeout_s)
            except BaseException:  # interrupted (Ctrl-C twice, SIGTERM): the worker must not outlive us
                _kill_group(proc.pid)
                proc.wait()
                raise
            # Always, and before the worker is reaped (so its pid, the group's id, cannot have been reused):
            # a worker that finished may still have left children (daemons, compilers) in its group.
            _kill_group(proc.pid)
            try:
                proc.wait(timeout=_KILL_WAIT_S)
            except subprocess.TimeoutExpired:
                pass
        log_text = log_path.read_text(errors="replace")
        result = _read_json(tmp / "result.json")
        if result is None:  # (a result written just before the deadline is still a complete result)
            result = _died(task, grid, shapes, device, tmp / "progress.json", proc.returncode, timed_out,
                           settings, log_text)
        # Paths in tracebacks and logs point into the private copy; show the caller its own directory.
        if result.get("error"):
            result["error"] = result["error"].replace(str(copy), str(program_dir))
        result["log"] = trim(log_text.replace(str(copy), str(program_dir)), limit)
    result["elapsed_s"] = time.monotonic() - start
    return result


def _read_json(path: Path) -> Optional[dict]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _died(task: Task, grid: Grid, shapes, device: str, progress_path: Path, returncode: Optional[int],
          timed_out: bool, settings: EvalSettings, log_text: str) -> dict:
    """The result of a worker that left no result: timed out, killed by a signal, or exited early."""
    progress = _read_json(progress_path) or {}
    stage = progress.get("stage", "static")
    where = f"during stage {stage}" + (f" ({progress['detail']})" if progress.get("detail") else "")
    if timed_out:
        what = f"timed out after {settings.timeout_s:g} s {where}; the worker's process group was killed"
    elif returncode is not None and returncode < 0:
        what = f"worker died with signal {-returncode} ({_signal_name(-returncode)}) {where}"
    else:
        what = f"worker exited with status {returncode} {where} without writing a result"
    tail = log_text[-min(len(log_text), max(500, settings.log_chars // 2)):].rstrip()
    error = what + (f"\nlast output of the worker:\n{tail}" if tail else "")
    info = progress.get("device") or device_info(device, query_gpu=False)
    return fail(new_result(task, grid, shapes, info), stage, error, settings.log_chars)


def bench(program_dir, task: Task, grid: Grid, settings: EvalSettings, *, reps: int = 10,
          gpu: Optional[int] = None, baselines: bool = True) -> dict:
    """The paper's comparison: after the full correctness cascade, `reps` full timing passes over the grid,
    the program and every available baseline interleaved by the same protocol (no cached baseline figures).

    Returns {"task", "grid", "device", "correct", "error", "impls": ["program", <baselines>...],
    "configs": [{"label", "shape", "tflops": {impl: [one median per repetition]}}], "result": <evaluate's>}.
    """
    if reps < 1:
        raise ValueError(f"reps must be at least 1, got {reps}")
    settings = replace(settings, baseline_cache=False, baselines=list(settings.baselines) if baselines else [])
    # Each repetition is a timing pass: the hard limit grows with them.
    settings.timeout_s = settings.timeout_s * (1 + reps)
    result = evaluate(program_dir, task, grid, settings, gpu=gpu, bench_reps=reps)
    data = result.pop("bench", None) or {"impls": ["program"], "configs": [
        {"label": c["label"], "shape": c["shape"], "tflops": {"program": []}} for c in result["configs"]]}
    return {"task": task.name, "grid": grid.name, "device": result.get("device", {}),
            "correct": bool(result.get("correct")), "error": result.get("error"), **data, "result": result}

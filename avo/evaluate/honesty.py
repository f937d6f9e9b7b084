"""Dynamic honesty checks: what a program actually does while it runs, beyond its source text.

Each guards against a class of exploit seen in kernel-generation work (KernelBench, Sakana's AI CUDA
Engineer, METR's study of reward hacking in kernel optimisation):

- `OpMonitor`: the ATen ops a call really executes (a TorchDispatchMode), so another attention
  implementation reached through an alias, `getattr` or `torch.ops` is seen, not only its name in the source.
- `HarnessGuard`: the timers, synchronisation and checking functions the evaluator relies on, by identity,
  so a program that patches `time.perf_counter`, CUDA events or the checks themselves is refused.
- `ConcurrencyGuard`: Python threads and child processes left running after a call (work deferred there
  would escape the timer).
- `relative_l2`: a whole-tensor error bound next to the elementwise tolerance, so silently lowered
  precision (fp8 operands, a truncated exp) shows even where every single element stays within tolerance.
- `speed_verdict`: a result above the device's measured matrix peak is impossible and rejected; one far
  above the best baseline is flagged for a person to review.
"""
from __future__ import annotations

import os
import re
import threading
import time
from typing import Optional

# ATen ops (schema names) that are attention implementations a program must not call.
FORBIDDEN_OP = re.compile(r"^aten::\w*(attention|_sdp|sdpa|_flash_|_efficient_attention|_cudnn_attention)\w*$")


class OpMonitor:
    """Records the schema names of ATen ops executed inside `with monitor:` (any thread's dispatch mode)."""

    def __init__(self) -> None:
        from torch.utils._python_dispatch import TorchDispatchMode

        ops = self.ops = set()

        class _Recorder(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                ops.add(func._schema.name)
                return func(*args, **(kwargs or {}))

        self._mode = _Recorder()

    def __enter__(self) -> "OpMonitor":
        self._mode.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._mode.__exit__(*exc)

    def forbidden(self) -> list[str]:
        return sorted(op for op in self.ops if FORBIDDEN_OP.match(op))


def _guarded_objects() -> dict[str, object]:
    """Name -> object for everything the evaluator's verdict depends on."""
    import inspect

    import torch

    from avo import task as task_module
    from avo.evaluate import baselines, checks, timing

    objs: dict[str, object] = {
        "time.perf_counter": time.perf_counter, "time.monotonic": time.monotonic, "time.time": time.time,
        "torch.cuda.synchronize": torch.cuda.synchronize, "torch.cuda.Event": torch.cuda.Event,
        "torch.equal": torch.equal, "torch.isfinite": torch.isfinite, "torch.matmul": torch.matmul,
        "torch.softmax": torch.softmax, "torch.Tensor": torch.Tensor,
    }
    for name in ("float", "abs", "max", "sum", "any", "__sub__", "__gt__", "__mul__", "__add__", "clone",
                 "norm", "masked_fill", "transpose", "repeat_interleave", "softmax", "__torch_function__"):
        # getattr_static: a classmethod looked up normally is a new bound object every time.
        objs[f"torch.Tensor.{name}"] = inspect.getattr_static(torch.Tensor, name)
    for name in ("record", "elapsed_time", "synchronize"):
        objs[f"torch.cuda.Event.{name}"] = inspect.getattr_static(torch.cuda.Event, name)
    for module in (checks, timing, baselines, task_module):
        for name, value in vars(module).items():
            if callable(value) and not name.startswith("__"):
                objs[f"{module.__name__}.{name}"] = value
    return objs


class HarnessGuard:
    """Snapshot of the harness by identity; `changed()` names whatever a program replaced since."""

    def __init__(self) -> None:
        self._snapshot = _guarded_objects()

    def changed(self) -> list[str]:
        now = _guarded_objects()
        return sorted(name for name, obj in self._snapshot.items() if now.get(name) is not obj)


def _children(pid: int) -> list[int]:
    found = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                found += [int(c) for c in f.read().split()]
    except OSError:  # no /proc (not Linux): the process-group kill still bounds what a child can do
        pass
    return found


class ConcurrencyGuard:
    """Python threads and child processes that were not there when the guard was made."""

    def __init__(self) -> None:
        self._threads = {t.ident for t in threading.enumerate()}
        self._children = set(_children(os.getpid()))

    def violations(self) -> Optional[str]:
        threads = [t.name for t in threading.enumerate() if t.ident not in self._threads and t.is_alive()]
        children = [c for c in _children(os.getpid()) if c not in self._children]
        if not threads and not children:
            return None
        parts = []
        if threads:
            parts.append(f"{len(threads)} thread(s) still running ({', '.join(threads[:3])})")
        if children:
            parts.append(f"{len(children)} child process(es) still running (pids {children[:5]})")
        return ("the program left " + " and ".join(parts) + " after returning: work must be done inside the "
                "call, not deferred to threads or processes")


def relative_l2(out, ref) -> float:
    """||out - ref|| / ||ref|| over the whole tensor (float32)."""
    diff = (out.float() - ref).norm()
    return float(diff / ref.norm().clamp_min(1e-30))


def speed_verdict(tflops: dict[str, float], *, peak: Optional[float], baselines: dict[str, dict[str, float]],
                  review_factor: float) -> tuple[Optional[str], list[str]]:
    """(reason to reject or None, review flags) for per-configuration TFLOPS against peak and baselines."""
    reject = None
    flags = []
    for label, value in tflops.items():
        if peak and value > peak:
            reject = (f"{label}: {value:.1f} TFLOPS exceeds the device's measured matrix peak of {peak:.1f} "
                      "TFLOPS: the timing cannot be right (work skipped, deferred or cached)")
            break
        best = max(baselines.get(label, {}).values(), default=None)
        if best and value > review_factor * best:
            flags.append(f"review: {label} at {value:.1f} TFLOPS is {value / best:.2f}x the best baseline "
                         f"({best:.1f}); check it by hand before trusting it")
    return reject, flags

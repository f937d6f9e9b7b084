"""The evaluator's result document (a plain JSON-able dict) and the trimming of long text in it.

Shape of a result:
    {"stage", "correct", "error", "configs": [{"shape", "label", "max_err", "tol_atol", "tol_rtol", "ms",
     "spread_ms", "tflops"}], "score", "device", "baselines", "flags", "log", "elapsed_s", "grid", "task"}
"spread_ms" is {"min", "max", "iqr", "mean"} in ms plus "rel_range" = (max - min) / median and
"rel_iqr" = iqr / median; "ms" is the median. "max_err" is the largest |out - ref| over the trials.
Every grid configuration always has an entry, so score vectors of different candidates line up; entries not
measured have None in place of numbers, and tflops/score are 0.0 whenever the program is not correct.
"""
from __future__ import annotations

import importlib.metadata
import platform
from typing import Optional

from avo.task import Grid, Shape, Task, aggregate

STAGES = ("static", "compile", "correctness_small", "correctness_grid", "timing", "done")


def trim(text: Optional[str], limit: int) -> Optional[str]:
    """Head and tail of `text` within about `limit` characters: the first error and the last lines both matter."""
    if text is None or len(text) <= limit:
        return text
    head = limit // 2
    tail = limit - head
    elided = len(text) - head - tail
    return f"{text[:head]}\n... [{elided} chars elided] ...\n{text[-tail:]}"


def config_entry(shape: Shape, task: Task) -> dict:
    return {
        "shape": shape.to_dict(),
        "label": shape.label,
        "max_err": None,
        "tol_atol": task.atol,
        "tol_rtol": task.rtol,
        "ms": None,
        "spread_ms": None,
        "tflops": 0.0,
    }


def new_result(task: Task, grid: Grid, shapes: list[Shape], device: Optional[dict] = None) -> dict:
    return {
        "stage": STAGES[0],
        "correct": False,
        "error": None,
        "configs": [config_entry(s, task) for s in shapes],
        "score": 0.0,
        "device": device or {},
        "baselines": {},
        "flags": [],
        "log": "",
        "elapsed_s": 0.0,
        "grid": grid.name,
        "task": task.name,
    }


def fail(result: dict, stage: str, error: str, limit: int) -> dict:
    """Mark `result` failed at `stage`: correct False and every TFLOPS figure zeroed."""
    result["stage"] = stage
    result["correct"] = False
    result["error"] = trim(error, limit)
    finalize(result)
    return result


def finalize(result: dict) -> dict:
    """Score = aggregate TFLOPS when correct; all zeros otherwise."""
    if not result["correct"]:
        for c in result["configs"]:
            c["tflops"] = 0.0
        result["score"] = 0.0
    else:
        result["score"] = aggregate([c["tflops"] for c in result["configs"]])
    return result


def versions() -> dict:
    """Library versions without importing them (the facade may report a worker that died before torch loaded)."""
    def version(dist: str) -> Optional[str]:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            return None

    return {"torch": version("torch"), "triton": version("triton"), "python": platform.python_version()}


def device_info(kind: str, query_gpu: bool = True) -> dict:
    """Device description. query_gpu reads the GPU's name, which initialises CUDA: the worker does; the
    facade (which must leave CUDA alone) passes False and reports name None for a GPU."""
    info = {"kind": kind, "name": platform.processor() or platform.machine(), "cuda": None, **versions()}
    if kind == "cuda":
        info["name"] = None
    if kind == "cuda" and query_gpu:
        import torch

        info["name"] = torch.cuda.get_device_name(0)
        info["cuda"] = torch.version.cuda
    return info

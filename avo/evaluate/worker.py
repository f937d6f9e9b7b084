"""The evaluation worker: `python -m avo.evaluate.worker <request.json>`, run by the facade in a child process.

It evaluates one program (already copied to a private directory) through the cascade
    static -> compile -> correctness_small -> correctness_grid -> timing -> done,
stops at the first failure with the program's own message, and writes the result JSON to the path named in
the request. Before each stage (and each configuration inside it) it rewrites a small progress file, so
that if the program hangs or kills the process the facade can still say where it happened.

Request keys: program_dir, task, grid, settings (dicts of the avo dataclasses), device ("cpu"|"cuda"),
progress_path, result_path.
"""
from __future__ import annotations

import importlib.util
import json
import math
import os
import sys
import time
import traceback
import uuid
from pathlib import Path
from typing import Callable, Optional

from avo.evaluate import checks
from avo.evaluate.result import device_info, fail, finalize, new_result
from avo.evaluate.settings import EvalSettings
from avo.evaluate.timing import time_call
from avo.task import Grid, GridPoint, Shape, Task, grid_shapes, reference_attention, with_seqlen

# Peak of the float32 score matrices the chunked reference may hold at once (scores, softmax, temporaries).
REFERENCE_BUDGET_BYTES = 1 << 30
# Query heads are "peaked" (scaled by a factor drawn from this range) on alternating heads every trial, so a
# near-uniform softmax cannot hide a missing rescale or max subtraction; a few keys are outliers too.
PEAK_Q_SCALE = (4.0, 8.0)
OUTLIER_K_SCALE = 4.0

_START = time.monotonic()  # log lines carry the time since the worker started, to show where time goes


class ProgramError(Exception):
    """A failure attributable to the program; its message is what the result reports."""


def write_json_atomic(path: Path, data: dict) -> None:
    tmp = Path(f"{path}.tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def load_request(path: str) -> tuple[Path, Task, Grid, EvalSettings, str, Path, Path]:
    req = json.loads(Path(path).read_text())
    grid = dict(req["grid"])
    grid["configs"] = [GridPoint(**c) for c in grid.get("configs", [])]
    return (Path(req["program_dir"]), Task(**req["task"]), Grid(**grid), EvalSettings(**req["settings"]),
            req["device"], Path(req["progress_path"]), Path(req["result_path"]))


def format_exception(exc: BaseException) -> str:
    """Python's own traceback, without the worker's frames (the program's frames are what matter)."""
    te = traceback.TracebackException.from_exception(exc)
    te.stack = traceback.StackSummary.from_list([f for f in te.stack if f.filename != __file__])
    return "".join(te.format()).rstrip()


def make_inputs(shape: Shape, seed: int, trial: int, device: str):
    """Fresh q, k, v for one trial: Gaussian, with peaked query heads and a few outlier keys."""
    import torch

    g = torch.Generator(device=device).manual_seed(seed)
    b, s, hq, hkv, d = shape.batch, shape.seqlen, shape.heads_q, shape.heads_kv, shape.head_dim
    q = torch.randn(b, s, hq, d, generator=g, device=device)
    k = torch.randn(b, s, hkv, d, generator=g, device=device)
    v = torch.randn(b, s, hkv, d, generator=g, device=device)
    # Alternate which heads are peaked between trials, so every head index sees both regimes.
    peaked = (torch.arange(hq, device=device) + trial) % 2 == 0
    scale = torch.empty(hq, device=device).uniform_(*PEAK_Q_SCALE, generator=g)
    q = q * torch.where(peaked, scale, torch.ones_like(scale))[None, None, :, None]
    n_outliers = min(s, 1 + s // 512)
    pos = torch.randint(0, s, (b, n_outliers, hkv, 1), generator=g, device=device)
    boost = torch.ones(b, s, hkv, 1, device=device).scatter_(1, pos, OUTLIER_K_SCALE)
    k = k * boost
    dtype = getattr(torch, shape.dtype)
    return {"q": q.to(dtype).contiguous(), "k": k.to(dtype).contiguous(), "v": v.to(dtype).contiguous()}


def chunked_reference(q, k, v, *, causal: bool, sm_scale: float):
    """avo.task.reference_attention, in head chunks so the float32 scores fit REFERENCE_BUDGET_BYTES."""
    import torch

    torch.backends.cuda.matmul.allow_tf32 = False  # a program may have switched it on; the reference is fp32
    b, s, hq, _ = q.shape
    hkv = k.shape[2]
    group = hq // hkv
    per_head = 3 * 4 * s * s  # scores, softmax output, one temporary, float32
    fit = max(1, REFERENCE_BUDGET_BYTES // per_head)
    if fit >= b * hq:
        return reference_attention(q, k, v, causal=causal, sm_scale=sm_scale)
    out = torch.empty(q.shape, dtype=torch.float32, device=q.device)
    for bi in range(b):
        if fit >= group:  # whole GQA groups per chunk
            step = fit // group
            for k0 in range(0, hkv, step):
                k1 = min(hkv, k0 + step)
                out[bi:bi + 1, :, k0 * group:k1 * group] = reference_attention(
                    q[bi:bi + 1, :, k0 * group:k1 * group], k[bi:bi + 1, :, k0:k1], v[bi:bi + 1, :, k0:k1],
                    causal=causal, sm_scale=sm_scale)
        else:  # one query head at a time, against its KV head
            for h in range(hq):
                kh = h // group
                out[bi:bi + 1, :, h:h + 1] = reference_attention(
                    q[bi:bi + 1, :, h:h + 1], k[bi:bi + 1, :, kh:kh + 1], v[bi:bi + 1, :, kh:kh + 1],
                    causal=causal, sm_scale=sm_scale)
    return out


class Worker:
    def __init__(self, program_dir: Path, task: Task, grid: Grid, settings: EvalSettings, device: str,
                 progress_path: Path):
        self.program_dir = program_dir
        self.task = task
        self.grid = grid
        self.settings = settings
        self.device = device
        self.progress_path = progress_path
        self.device_info: dict = {}
        self.attention: Optional[Callable] = None

    # --- bookkeeping ---------------------------------------------------------------------------------

    def progress(self, stage: str, detail: str = "") -> None:
        write_json_atomic(self.progress_path, {"stage": stage, "detail": detail, "device": self.device_info,
                                               "time": time.time()})
        print(f"[avo worker +{time.monotonic() - _START:.2f}s] {stage}{': ' + detail if detail else ''}", flush=True)

    def sync(self) -> None:
        if self.device == "cuda":
            import torch

            torch.cuda.synchronize()

    # --- the cascade ---------------------------------------------------------------------------------

    def run(self) -> dict:
        shapes = grid_shapes(self.task, self.grid)
        result = new_result(self.task, self.grid, shapes)
        limit = self.settings.log_chars
        stage = "static"
        try:
            self.progress(stage)
            err = checks.static_error(self.program_dir)
            if err:
                return fail(result, stage, err, limit)

            stage = "compile"
            self.progress(stage, "importing torch")
            import torch  # noqa: F401  (timed on its own: it is a large part of a CPU evaluation)

            self.device_info = device_info(self.device)
            result["device"] = self.device_info
            self.progress(stage, "importing kernel.py")
            self.attention = self.load_program()

            stage = "correctness_small"
            base = shapes[0]
            for seqlen in self.settings.odd_seqlens:
                shape = with_seqlen(base, seqlen)
                self.check_correct(stage, shape, seed_base=1_000_000 + 1_000 * seqlen)

            stage = "correctness_grid"
            for i, (shape, entry) in enumerate(zip(shapes, result["configs"])):
                entry["max_err"] = self.check_correct(stage, shape, seed_base=2_000_000 + 1_000 * i)

            stage = "timing"
            for i, (shape, entry) in enumerate(zip(shapes, result["configs"])):
                self.time_config(stage, shape, entry, seed=3_000_000 + i)

            result["stage"] = "done"
            result["correct"] = True
            self.progress("done")
            return finalize(result)
        except ProgramError as exc:
            return fail(result, stage, str(exc), limit)
        except Exception as exc:  # the evaluator's own failure (e.g. out of memory in the reference)
            return fail(result, stage, f"evaluator error during stage {stage}:\n{format_exception(exc)}", limit)

    def load_program(self) -> Callable:
        path = self.program_dir / "kernel.py"
        # A unique module name, so nothing cached under a common name (e.g. "kernel") can be picked up.
        name = f"avo_program_{uuid.uuid4().hex[:12]}"
        sys.path.insert(0, str(self.program_dir))  # the program may import its own helper modules
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # Triton's JIT and dataclasses look functions' modules up here
        try:
            spec.loader.exec_module(module)
            self.sync()
        except BaseException as exc:
            raise ProgramError(f"importing kernel.py failed:\n{format_exception(exc)}") from None
        attention = getattr(module, "attention", None)
        if attention is None:
            raise ProgramError("kernel.py does not define `attention`; a program must define "
                               "attention(q, k, v, *, causal, sm_scale) -> torch.Tensor")
        if not callable(attention):
            raise ProgramError(f"kernel.py defines `attention` as a {type(attention).__name__}, not a function")
        return attention

    def call(self, stage: str, what: str, shape: Shape, inputs: dict):
        sm_scale = 1.0 / math.sqrt(shape.head_dim)
        try:
            out = self.attention(inputs["q"], inputs["k"], inputs["v"], causal=shape.causal, sm_scale=sm_scale)
            self.sync()  # asynchronous CUDA errors surface here, attributed to this call
        except BaseException as exc:
            raise ProgramError(f"{stage}: attention raised on {what}:\n{format_exception(exc)}") from None
        return out

    def validate(self, stage: str, what: str, shape: Shape, out, inputs: dict, clones: dict) -> float:
        """Output checks and comparison with the float32 reference; returns the max abs error."""
        err = checks.check_output(out, inputs["q"]) or checks.check_inputs_unchanged(inputs, clones)
        if err:
            raise ProgramError(f"{stage}: {err} on {what}")
        ref = chunked_reference(clones["q"], clones["k"], clones["v"], causal=shape.causal,
                                sm_scale=1.0 / math.sqrt(shape.head_dim))
        max_err, err = checks.compare(out, ref, atol=self.task.atol, rtol=self.task.rtol)
        if err:
            raise ProgramError(f"{stage}: wrong result on {what}: {err}")
        return max_err

    def check_correct(self, stage: str, shape: Shape, seed_base: int) -> float:
        max_err = 0.0
        for trial in range(self.settings.trials):
            what = f"{describe(shape)}, trial {trial}"
            self.progress(stage, what)
            inputs = make_inputs(shape, seed_base + trial, trial, self.device)
            clones = {name: t.clone() for name, t in inputs.items()}
            out = self.call(stage, what, shape, inputs)
            max_err = max(max_err, self.validate(stage, what, shape, out, inputs, clones))
            del out, inputs, clones
        return max_err

    def time_config(self, stage: str, shape: Shape, entry: dict, seed: int) -> None:
        what = f"{describe(shape)}, timed calls"
        self.progress(stage, what)
        # Fresh inputs, and the output of the last timed call is validated too: a program that caches results
        # of the correctness inputs, or skips or defers work once warmed up, fails here.
        inputs = make_inputs(shape, seed, 0, self.device)
        clones = {name: t.clone() for name, t in inputs.items()}
        last = {}

        def fn():
            last["out"] = self.call(stage, what, shape, inputs)

        stats = time_call(fn, device=self.device, warmup=self.settings.warmup, repeats=self.settings.repeats,
                          flush_l2=self.settings.flush_l2)
        self.validate(stage, what, shape, last.pop("out"), inputs, clones)
        median = stats["median_ms"]
        entry["ms"] = median
        entry["spread_ms"] = {
            "min": stats["min_ms"], "max": stats["max_ms"], "iqr": stats["iqr_ms"], "mean": stats["mean_ms"],
            "rel_range": (stats["max_ms"] - stats["min_ms"]) / median if median > 0 else 0.0,
            "rel_iqr": stats["iqr_ms"] / median if median > 0 else 0.0,
        }
        entry["tflops"] = shape.flops / (median / 1e3) / 1e12 if median > 0 else 0.0


def describe(shape: Shape) -> str:
    return f"{shape.label} {'causal' if shape.causal else 'non-causal'} {shape.dtype}"


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m avo.evaluate.worker <request.json>", file=sys.stderr)
        return 2
    program_dir, task, grid, settings, device, progress_path, result_path = load_request(argv[1])
    worker = Worker(program_dir, task, grid, settings, device, progress_path)
    result = worker.run()
    write_json_atomic(result_path, result)
    return 0


if __name__ == "__main__":
    code = main(sys.argv)
    sys.stdout.flush()
    sys.stderr.flush()
    # Skip interpreter teardown: a program's leftover threads or CUDA teardown must not hang a finished worker.
    os._exit(code)

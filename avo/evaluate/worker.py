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

from avo.evaluate import baselines as baselines_mod
from avo.evaluate import checks
from avo.evaluate.honesty import ConcurrencyGuard, HarnessGuard, OpMonitor, relative_l2, speed_verdict
from avo.evaluate.result import device_info, fail, finalize, new_result
from avo.evaluate.settings import EvalSettings
from avo.evaluate.timing import make_clock, measure_interleaved, rounds_for, wall_per_call
from avo.task import Grid, GridPoint, Shape, Task, aggregate, grid_shapes, reference_attention, with_seqlen

# Peak of the float32 score matrices the chunked reference may hold at once (scores, softmax, temporaries).
REFERENCE_BUDGET_BYTES = 1 << 30
# Query heads are "peaked" (scaled by a factor drawn from this range) on alternating heads every trial, so a
# near-uniform softmax cannot hide a missing rescale or max subtraction; a few keys are outliers too.
PEAK_Q_SCALE = (4.0, 8.0)
OUTLIER_K_SCALE = 4.0
# Timing inputs: a pool of fresh sets within this fraction of the free device memory (on a CPU, of
# INPUT_POOL_CPU_BYTES); timed rounds per implementation and shape at most MAX_ROUNDS.
INPUT_POOL_FRACTION = 0.25
INPUT_POOL_CPU_BYTES = 4 << 30
MAX_ROUNDS = 1000

_START = time.monotonic()  # log lines carry the time since the worker started, to show where time goes


class ProgramError(Exception):
    """A failure attributable to the program; its message is what the result reports."""


def write_json_atomic(path: Path, data: dict) -> None:
    tmp = Path(f"{path}.tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def load_request(path: str) -> dict:
    req = json.loads(Path(path).read_text())
    grid = dict(req["grid"])
    grid["configs"] = [GridPoint(**c) for c in grid.get("configs", [])]
    req["grid"], req["task"], req["settings"] = Grid(**grid), Task(**req["task"]), EvalSettings(**req["settings"])
    return req


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


def timing_inputs(shape: Shape, gen, device: str) -> dict:
    """A fresh Gaussian q, k, v for timed calls (the peaked inputs are for correctness)."""
    import torch

    dtype = getattr(torch, shape.dtype)
    b, s, d = shape.batch, shape.seqlen, shape.head_dim
    return {name: torch.randn(b, s, h, d, generator=gen, device=device).to(dtype)
            for name, h in (("q", shape.heads_q), ("k", shape.heads_kv), ("v", shape.heads_kv))}


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
    """One evaluation: the cascade for the program, timed against its incumbent and baselines when given."""

    def __init__(self, program_dir: Path, task: Task, grid: Grid, settings: EvalSettings, device: str,
                 progress_path: Path, *, incumbent_dir: Optional[Path] = None, bench_reps: int = 0):
        self.program_dir = program_dir
        self.task = task
        self.grid = grid
        self.settings = settings
        self.device = device
        self.progress_path = progress_path
        self.incumbent_dir = incumbent_dir
        self.bench_reps = bench_reps
        self.device_info: dict = {}
        self.attention: Optional[Callable] = None
        self.incumbent: Optional[Callable] = None
        self.clock = None
        self.guard: Optional[HarnessGuard] = None
        self.concurrency: Optional[ConcurrencyGuard] = None

    # --- bookkeeping ---------------------------------------------------------------------------------

    def progress(self, stage: str, detail: str = "") -> None:
        write_json_atomic(self.progress_path, {"stage": stage, "detail": detail, "device": self.device_info,
                                               "time": time.time()})
        print(f"[avo worker +{time.monotonic() - _START:.2f}s] {stage}{': ' + detail if detail else ''}", flush=True)

    def sync(self) -> None:
        if self.device == "cuda":
            import torch

            torch.cuda.synchronize()

    def check_harness(self, when: str) -> None:
        changed = self.guard.changed() if self.guard else []
        if changed:
            raise ProgramError(f"the program replaced parts of the evaluator ({', '.join(changed[:6])}) {when}; "
                               "a program must not patch timers, synchronisation or the checks")

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
            # The clock (and its calibration) and the guards exist before any program code runs.
            self.clock = make_clock(self.device, self.settings.flush_l2)
            self.guard = HarnessGuard()
            self.concurrency = ConcurrencyGuard()
            if self.incumbent_dir is not None:
                self.progress(stage, "importing the incumbent")
                try:
                    self.incumbent = self.load_program(self.incumbent_dir)
                except ProgramError as exc:  # the incumbent was committed correct; say so, but judge the candidate
                    result["flags"].append(f"incumbent could not be loaded for interleaved timing: {exc}"[:500])
            self.progress(stage, "importing kernel.py")
            self.attention = self.load_program(self.program_dir)
            self.check_harness("while being imported")

            stage = "correctness_small"
            base = shapes[0]
            for i, seqlen in enumerate(self.settings.odd_seqlens):
                shape = with_seqlen(base, seqlen)
                self.check_correct(stage, shape, seed_base=1_000_000 + 1_000 * seqlen, monitor=i == 0)

            stage = "correctness_grid"
            for i, (shape, entry) in enumerate(zip(shapes, result["configs"])):
                entry["max_err"], entry["rel_l2"] = self.check_correct(stage, shape, seed_base=2_000_000 + 1_000 * i,
                                                                       monitor=not self.settings.odd_seqlens and i == 0)
                entry["tol_rel_l2"] = self.task.rel_l2

            stage = "timing"
            self.time_grid(stage, shapes, result)
            self.check_harness("while being timed")
            if self.bench_reps:
                stage = "bench"
                result["bench"] = self.bench(stage, shapes)

            result["stage"] = "done"
            result["correct"] = True
            self.progress("done")
            return finalize(result)
        except ProgramError as exc:
            return fail(result, stage, str(exc), limit)
        except Exception as exc:  # the evaluator's own failure (e.g. out of memory in the reference)
            return fail(result, stage, f"evaluator error during stage {stage}:\n{format_exception(exc)}", limit)

    def load_program(self, program_dir: Path) -> Callable:
        path = program_dir / "kernel.py"
        # A unique module name, so nothing cached under a common name (e.g. "kernel") can be picked up.
        name = f"avo_program_{uuid.uuid4().hex[:12]}"
        sys.path.insert(0, str(program_dir))  # the program may import its own helper modules
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # Triton's JIT and dataclasses look functions' modules up here
        try:
            spec.loader.exec_module(module)
            self.sync()
        except BaseException as exc:
            raise ProgramError(f"importing kernel.py failed:\n{format_exception(exc)}") from None
        finally:
            sys.path.remove(str(program_dir))
        attention = getattr(module, "attention", None)
        if attention is None:
            raise ProgramError("kernel.py does not define `attention`; a program must define "
                               "attention(q, k, v, *, causal, sm_scale) -> torch.Tensor")
        if not callable(attention):
            raise ProgramError(f"kernel.py defines `attention` as a {type(attention).__name__}, not a function")
        return attention

    def call(self, stage: str, what: str, shape: Shape, inputs: dict, fn: Optional[Callable] = None,
             sync: bool = True):
        sm_scale = 1.0 / math.sqrt(shape.head_dim)
        try:
            out = (fn or self.attention)(inputs["q"], inputs["k"], inputs["v"], causal=shape.causal,
                                         sm_scale=sm_scale)
            if sync:  # asynchronous CUDA errors surface here, attributed to this call (not while timing)
                self.sync()
        except BaseException as exc:
            raise ProgramError(f"{stage}: attention raised on {what}:\n{format_exception(exc)}") from None
        return out

    def validate(self, stage: str, what: str, shape: Shape, out, inputs: dict, clones: dict) -> tuple[float, float]:
        """Output checks and comparison with the float32 reference; returns (max abs error, relative L2)."""
        err = (checks.check_output(out, inputs["q"]) or checks.check_inputs_unchanged(inputs, clones)
               or (self.concurrency.violations() if self.concurrency else None))
        if err:
            raise ProgramError(f"{stage}: {err} on {what}")
        # The reference is computed only now, after the call: there is nothing for a program to read back.
        ref = chunked_reference(clones["q"], clones["k"], clones["v"], causal=shape.causal,
                                sm_scale=1.0 / math.sqrt(shape.head_dim))
        max_err, err = checks.compare(out, ref, atol=self.task.atol, rtol=self.task.rtol)
        if err:
            raise ProgramError(f"{stage}: wrong result on {what}: {err}")
        rel = relative_l2(out, ref)
        if rel > self.task.rel_l2:
            raise ProgramError(f"{stage}: result too imprecise on {what}: relative L2 error {rel:.3g} > "
                               f"{self.task.rel_l2:g} (task.rel_l2); lowered precision is not allowed")
        return max_err, rel

    def check_correct(self, stage: str, shape: Shape, seed_base: int, monitor: bool = False) -> tuple[float, float]:
        max_err = rel = 0.0
        for trial in range(self.settings.trials):
            what = f"{describe(shape)}, trial {trial}"
            self.progress(stage, what)
            inputs = make_inputs(shape, seed_base + trial, trial, self.device)
            clones = {name: t.clone() for name, t in inputs.items()}
            if monitor and trial == 0 and self.settings.monitor_ops:
                with OpMonitor() as ops:
                    out = self.call(stage, what, shape, inputs)
                if ops.forbidden():
                    raise ProgramError(f"{stage}: the program executed another attention implementation "
                                       f"({', '.join(ops.forbidden())}) on {what}; it must compute attention itself")
            else:
                out = self.call(stage, what, shape, inputs)
            e, r = self.validate(stage, what, shape, out, inputs, clones)
            max_err, rel = max(max_err, e), max(rel, r)
            del out, inputs, clones
        return max_err, rel

    # --- timing --------------------------------------------------------------------------------------

    def implementations(self, with_baselines: bool) -> dict[str, Callable]:
        impls = {"program": self.attention}
        if self.incumbent is not None:
            impls["incumbent"] = self.incumbent
        if with_baselines:
            impls.update(baselines_mod.available(self.settings.baselines, self.device))
        return impls

    def measure(self, stage: str, shape: Shape, impls: dict[str, Callable], seed: int, validate: bool) -> dict:
        """Timing of `impls` on one shape; returns {name: timing summary}.

        The program and its incumbent are timed interleaved; every timed call of theirs gets a (q, k, v)
        combination no earlier call saw, from a pool drawn before the clock starts, so no call can return an
        earlier result and nothing but the L2 flush runs between calls. The program's output is validated on
        a randomly chosen timed call and on the last one, after the timing. The baselines, trusted code, are
        timed one at a time on one input set, as do_bench does. On a GPU every one is timed over at least
        `rep_ms` after at least `warmup_ms` of warm-up, the windows of do_bench.
        """
        import torch

        what = f"{describe(shape)}, timed calls"
        self.progress(stage, what)
        gen = torch.Generator(device=self.device).manual_seed(seed)
        stats = {}
        candidates = {n: fn for n, fn in impls.items() if n in ("program", "incumbent")}
        if candidates:
            stats.update(self.measure_candidates(stage, what, shape, candidates, gen, validate))
        for name, fn in impls.items():
            if name not in candidates:
                inputs = timing_inputs(shape, gen, self.device)
                calls = {name: lambda fn=fn: self.call(stage, what, shape, inputs, fn, sync=False)}
                stats.update(self.timed(stage, what, calls, self.rounds(calls)))
        return stats

    def rounds(self, calls: dict) -> int:
        rep_ms = self.settings.rep_ms if self.device == "cuda" else 0.0
        return rounds_for(calls, clock=self.clock, repeats=self.settings.repeats, rep_ms=rep_ms,
                          max_rounds=MAX_ROUNDS)

    def timed(self, stage: str, what: str, calls: dict, repeats: int, **hooks) -> dict:
        try:
            return measure_interleaved(calls, clock=self.clock, warmup=self.settings.warmup, repeats=repeats,
                                       warmup_ms=self.settings.warmup_ms if self.device == "cuda" else 0.0, **hooks)
        except ProgramError:
            raise
        except Exception as exc:  # an asynchronous CUDA error surfacing when the events are read
            raise ProgramError(f"{stage}: a timed call failed on {what}:\n{format_exception(exc)}") from None

    def measure_candidates(self, stage: str, what: str, shape: Shape, impls: dict, gen, validate: bool) -> dict:
        import torch

        warm = timing_inputs(shape, gen, self.device)
        state = {"inputs": warm, "round": None}
        outputs, checked = {}, set()  # rounds whose program output is validated (chosen once rounds are known)

        def wrapped(name: str, fn: Callable) -> Callable:
            def call():
                out = self.call(stage, what, shape, state["inputs"], fn, sync=False)
                if name == "program" and state["round"] in checked:
                    outputs[state["round"]] = out
            return call

        calls = {n: wrapped(n, fn) for n, fn in impls.items()}
        rounds = self.rounds(calls)
        # n sets give n * n (q, kv) combinations: round r takes q from set r % n and k, v from set
        # (r % n + r // n) % n, which runs through every pair once. As many sets as that needs, within
        # INPUT_POOL_FRACTION of the free memory (fewer rounds if it cannot hold them).
        elem = torch.empty((), dtype=getattr(torch, shape.dtype)).element_size()
        set_bytes = elem * shape.batch * shape.seqlen * (shape.heads_q + 2 * shape.heads_kv) * shape.head_dim
        free = torch.cuda.mem_get_info()[0] if self.device == "cuda" else INPUT_POOL_CPU_BYTES
        fit = max(1, int(free * INPUT_POOL_FRACTION) // set_bytes)
        n_sets = min(fit, math.ceil(math.sqrt(rounds)))
        rounds = max(self.settings.repeats, min(rounds, n_sets * n_sets))
        pool = [timing_inputs(shape, gen, self.device) for _ in range(n_sets)]

        def inputs_of(rnd: int) -> dict:
            a = rnd % n_sets
            b = (a + rnd // n_sets) % n_sets
            return {"q": pool[a]["q"], "k": pool[b]["k"], "v": pool[b]["v"]}

        if validate:
            checked.update({int(torch.randint(rounds, (1,), generator=gen, device=self.device)), rounds - 1})
        clones = {r: {k: t.clone() for k, t in inputs_of(r).items()} for r in checked}

        def before(name: str, rnd: Optional[int]) -> None:
            state["inputs"], state["round"] = (warm, None) if rnd is None else (inputs_of(rnd), rnd)

        stats = self.timed(stage, what, calls, rounds, before_each=before)
        # The timing reads events of the current stream only; a program may still be writing its last
        # outputs on a stream of its own (its time is caught by the wall-clock check). Validate what it wrote.
        self.sync()
        for rnd in sorted(checked):
            self.validate(stage, f"{what} (round {rnd})", shape, outputs[rnd], inputs_of(rnd), clones[rnd])
        return stats

    def time_grid(self, stage: str, shapes: list[Shape], result: dict) -> None:
        settings = self.settings
        cache = baselines_mod.BaselineCache() if settings.baseline_cache else None
        peak = self.peak(cache)
        result["device"]["peak_tflops"] = peak
        tflops_by_label, base_by_label, incumbent = {}, {}, []
        for i, (shape, entry) in enumerate(zip(shapes, result["configs"])):
            key = baselines_mod.cache_key(self.device_info.get("name", ""), shape.to_dict(),
                                          f"{settings.baselines}|{settings.repeats}|{settings.flush_l2}|"
                                          f"{settings.warmup_ms}|{settings.rep_ms}|alone")
            cached = cache.get(key) if cache and settings.baselines else None
            stats = self.measure(stage, shape, self.implementations(with_baselines=cached is None and
                                                                    bool(settings.baselines)),
                                 seed=3_000_000 + i, validate=True)
            fill_entry(entry, stats.pop("program"), shape)
            if self.device == "cuda":
                self.wall_check(stage, shape, entry, result)
            if "incumbent" in stats:
                incumbent.append(tflops(shape, stats.pop("incumbent")["median_ms"]))
            if cached is None:
                cached = {name: {"ms": st["median_ms"], "tflops": tflops(shape, st["median_ms"]),
                                 "rel_iqr": st["iqr_ms"] / st["median_ms"] if st["median_ms"] else 0.0}
                          for name, st in stats.items()}
                if cache and cached:
                    cache.put(key, cached)
            result["baselines"][entry["label"]] = cached
            entry["speedup"] = {name: entry["tflops"] / b["tflops"] for name, b in cached.items() if b["tflops"]}
            tflops_by_label[entry["label"]] = entry["tflops"]
            base_by_label[entry["label"]] = {name: b["tflops"] for name, b in cached.items()}
        names = sorted({n for b in base_by_label.values() for n in b})
        result["speedups"] = {n: aggregate(list(tflops_by_label.values())) / agg
                              for n in names
                              if (agg := aggregate([base_by_label[l].get(n, 0.0) for l in tflops_by_label]))}
        if incumbent:
            result["incumbent"] = {"score": aggregate(incumbent), "tflops": incumbent}
        if self.device == "cuda":  # CPU figures say nothing about what is plausible on a GPU
            reject, flags = speed_verdict(tflops_by_label, peak=peak, baselines=base_by_label,
                                          review_factor=settings.review_factor)
            result["flags"] += flags
            if reject:
                raise ProgramError(f"{stage}: {reject}")

    def wall_check(self, stage: str, shape: Shape, entry: dict, result: dict) -> None:
        """Work deferred off the timed stream shows as a wall clock much slower than the events."""
        inputs = make_inputs(shape, 4_000_000, 0, self.device)
        wall = wall_per_call(lambda: self.call(stage, "wall-clock check", shape, inputs, sync=False), clock=self.clock,
                             calls=max(3, self.settings.repeats))
        entry["wall_ms"] = wall
        if entry["ms"] < self.settings.wall_check * wall and wall - entry["ms"] > 0.05:
            result["flags"].append(f"{entry['label']}: event time {entry['ms']:.3f} ms but {wall:.3f} ms per call by "
                                   "the synchronised wall clock: work escaped the timed stream; the wall-clock "
                                   "figure is used")
            entry["ms"] = wall
            entry["tflops"] = tflops(shape, wall)

    def peak(self, cache) -> Optional[float]:
        if self.device != "cuda":
            return None
        key = baselines_mod.cache_key(self.device_info.get("name", ""), {}, "peak")
        hit = cache.get(key) if cache else None
        if hit:
            return hit["tflops"]
        value = baselines_mod.measure_peak_tflops(self.clock)
        if cache:
            cache.put(key, {"tflops": value})
        return value

    def bench(self, stage: str, shapes: list[Shape]) -> dict:
        """The paper's comparison: `bench_reps` full passes over the grid, program and baselines interleaved."""
        impls = self.implementations(with_baselines=bool(self.settings.baselines))
        configs = [{"label": s.label, "shape": s.to_dict(), "tflops": {n: [] for n in impls}} for s in shapes]
        for rep in range(self.bench_reps):
            for i, (shape, entry) in enumerate(zip(shapes, configs)):
                stats = self.measure(f"{stage} {rep + 1}/{self.bench_reps}", shape, impls,
                                     seed=5_000_000 + 1_000 * rep + i, validate=rep == 0)
                for name, st in stats.items():
                    entry["tflops"][name].append(tflops(shape, st["median_ms"]))
        return {"impls": list(impls), "configs": configs}


def tflops(shape: Shape, ms: float) -> float:
    return shape.flops / (ms / 1e3) / 1e12 if ms > 0 else 0.0


def fill_entry(entry: dict, stats: dict, shape: Shape) -> None:
    median = stats["median_ms"]
    entry["ms"] = median
    entry["spread_ms"] = {
        "min": stats["min_ms"], "max": stats["max_ms"], "iqr": stats["iqr_ms"], "mean": stats["mean_ms"],
        "rel_range": (stats["max_ms"] - stats["min_ms"]) / median if median > 0 else 0.0,
        "rel_iqr": stats["iqr_ms"] / median if median > 0 else 0.0,
    }
    entry["tflops"] = tflops(shape, median)


def describe(shape: Shape) -> str:
    return f"{shape.label} {'causal' if shape.causal else 'non-causal'} {shape.dtype}"


def die_with_parent() -> None:
    """Have the kernel kill this worker when the run that started it dies (kill -9 included), so that an
    orphaned worker never keeps timing on the GPU next to a restarted run. Linux only."""
    parent = os.environ.get("AVO_PARENT_PID")
    if not parent or not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, 9)  # PR_SET_PDEATHSIG, SIGKILL
    except (OSError, AttributeError):
        return
    if os.getppid() != int(parent):  # the run died before the call above
        os._exit(3)


def main(argv: list[str]) -> int:
    die_with_parent()
    if len(argv) != 2:
        print("usage: python -m avo.evaluate.worker <request.json>", file=sys.stderr)
        return 2
    req = load_request(argv[1])
    incumbent = req.get("incumbent_dir")
    worker = Worker(Path(req["program_dir"]), req["task"], req["grid"], req["settings"], req["device"],
                    Path(req["progress_path"]), incumbent_dir=Path(incumbent) if incumbent else None,
                    bench_reps=int(req.get("bench_reps", 0)))
    result = worker.run()
    write_json_atomic(Path(req["result_path"]), result)
    return 0


if __name__ == "__main__":
    code = main(sys.argv)
    sys.stdout.flush()
    sys.stderr.flush()
    # Skip interpreter teardown: a program's leftover threads or CUDA teardown must not hang a finished worker.
    os._exit(code)

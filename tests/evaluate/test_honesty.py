"""One test per class of exploit: a program that tries to game the score is rejected or flagged, with why.

Programs run in-process through the worker (fast); each starts from the correct plain-torch program of
conftest.py and cheats in one way. GPU-only exploits (side streams) are marked `gpu`.
"""
import importlib.util
import os
import re
import signal
import sys
import textwrap
import time
from pathlib import Path

import pytest

from avo.evaluate import checks
from avo.evaluate import worker as W
from avo.evaluate.honesty import FORBIDDEN_OP, speed_verdict
# The correct program every exploit starts from, from this directory's conftest (loaded by path: another
# test directory has a conftest module too, and `import conftest` would get whichever came first).
_spec = importlib.util.spec_from_file_location("_evaluate_conftest", Path(__file__).with_name("conftest.py"))
_conftest = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_conftest)
CORRECT = _conftest.CORRECT

EXPLOITS = {
    # Another attention implementation through an alias that the static text check cannot see.
    "sdpa_alias": CORRECT + '''
import torch.nn.functional as F
_fn = getattr(F, "scaled_dot_" + "product_attention")

def attention(q, k, v, *, causal, sm_scale):
    g = q.shape[2] // k.shape[2]
    o = _fn(q.transpose(1, 2), k.repeat_interleave(g, 2).transpose(1, 2), v.repeat_interleave(g, 2).transpose(1, 2),
            is_causal=causal, scale=sm_scale)
    return o.transpose(1, 2).contiguous()
''',
    # ... and straight through torch's dispatcher.
    "sdpa_dispatcher": CORRECT + '''
_op = getattr(torch.ops.aten, "_scaled_dot_" + "product_fl" + "ash_atten" + "tion_for_cpu")

def attention(q, k, v, *, causal, sm_scale):
    g = q.shape[2] // k.shape[2]
    o = _op(q.transpose(1, 2), k.repeat_interleave(g, 2).transpose(1, 2), v.repeat_interleave(g, 2).transpose(1, 2),
            0.0, causal, scale=sm_scale)[0]
    return o.transpose(1, 2).contiguous()
''',
    # Reads the evaluator's memory for a float32 tensor shaped like the answer.
    "reads_reference": CORRECT + '''
import gc

def attention(q, k, v, *, causal, sm_scale):
    for obj in gc.get_objects():
        if isinstance(obj, torch.Tensor) and obj.dtype == torch.float32 and obj.shape == q.shape:
            return obj.to(q.dtype)
    return torch.zeros_like(q)
''',
    # Replays an earlier output for every later call of the same shape (what a benchmark loop over fixed
    # inputs rewards). Keyed on the buffers instead it never hits: see test_every_timed_call_gets_new_buffers.
    "caches_outputs": CORRECT + '''
CACHE = {}

def attention(q, k, v, *, causal, sm_scale):
    key = tuple(q.shape)
    if key not in CACHE:
        CACHE[key] = _attn(q, k, v, causal, sm_scale)
    return CACHE[key]
''',
    # Leaves a thread running (work deferred there would escape the timer).
    "thread": CORRECT + '''
import time
_threads = __import__("thr" + "eading")

def attention(q, k, v, *, causal, sm_scale):
    _threads.Thread(target=time.sleep, args=(5,), daemon=True).start()
    return _attn(q, k, v, causal, sm_scale)
''',
    # Leaves a child process running.
    "process": CORRECT + '''
import os, time

def attention(q, k, v, *, causal, sm_scale):
    out = _attn(q, k, v, causal, sm_scale)
    if getattr(os, "fo" + "rk")() == 0:
        time.sleep(30)
        os._exit(0)
    return out
''',
    # Computes only the first half of the sequence.
    "partial": CORRECT + '''
def attention(q, k, v, *, causal, sm_scale):
    out = torch.zeros_like(q)
    half = max(1, q.shape[1] // 2)
    out[:, :half] = _attn(q, k, v, causal, sm_scale)[:, :half]
    return out
''',
    # Silently lowers precision: fp8 operands.
    "fp8": CORRECT + '''
def attention(q, k, v, *, causal, sm_scale):
    low = [t.to(torch.float8_e4m3fn).to(q.dtype) for t in (q, k, v)]
    return _attn(*low, causal, sm_scale)
''',
    # Right only on "nice" benchmark lengths.
    "nice_lengths_only": CORRECT + '''
def attention(q, k, v, *, causal, sm_scale):
    if q.shape[1] % 16:
        return torch.zeros_like(q)
    return _attn(q, k, v, causal, sm_scale)
''',
    # Patches the timer the CPU clock reads.
    "patches_timer": CORRECT + '''
import time
time.perf_counter = lambda: 0.0
''',
    # Patches the evaluator's own comparison.
    "patches_checks": CORRECT + '''
import avo.evaluate.checks as _c
_c.compare = lambda out, ref, **kw: (0.0, None)

def attention(q, k, v, *, causal, sm_scale):
    return torch.zeros_like(q)
''',
}


@pytest.fixture
def run_exploit(tmp_path, monkeypatch, task, grid, settings):
    monkeypatch.setattr(sys, "path", list(sys.path))
    # Exploits patch these in this process: monkeypatch puts the originals back after each test.
    monkeypatch.setattr(time, "perf_counter", time.perf_counter)
    monkeypatch.setattr(checks, "compare", checks.compare)

    def run(name):
        d = tmp_path / name
        d.mkdir()
        (d / "kernel.py").write_text(textwrap.dedent(EXPLOITS[name]))
        return W.Worker(d, task, grid, settings, "cpu", tmp_path / "progress.json").run()

    return run


@pytest.mark.parametrize("name, stage, message", [
    ("sdpa_alias", "correctness_small", "executed another attention implementation (aten::"),
    ("sdpa_dispatcher", "correctness_small", "_scaled_dot_product_flash_attention_for_cpu"),
    ("reads_reference", "correctness_small", "wrong result"),
    ("caches_outputs", "timing", "wrong result"),
    ("thread", "correctness_small", "thread(s) still running"),
    ("process", "correctness_small", "child process(es) still running"),
    ("partial", "correctness_small", "wrong result"),
    ("nice_lengths_only", "correctness_small", "wrong result on B1_S1_"),
    ("patches_timer", "compile", "replaced parts of the evaluator (time.perf_counter)"),
    ("patches_checks", "compile", "avo.evaluate.checks.compare"),
])
def test_exploit_is_rejected_with_the_reason(run_exploit, name, stage, message):
    res = run_exploit(name)
    if name == "process":  # in-process worker: reap the forked child here (a real worker's group is killed)
        for pid in map(int, re.findall(r"\d+", res["error"].split("pids [")[1].split("]")[0])):
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
    assert not res["correct"] and res["score"] == 0.0
    assert res["stage"] == stage and message in res["error"], res["error"]


@pytest.mark.parametrize("repeats, pool_sets", [(7, None), (4, 2)])
def test_every_timed_call_gets_a_new_input_combination(tmp_path, task, grid, settings, monkeypatch, repeats,
                                                       pool_sets):
    """No timed call of the program sees a (q, k, v) an earlier call saw, so a cache keyed on the buffers
    never hits, though only about sqrt(repeats) input sets are allocated (or as many as fit: 2 here); the
    incumbent gets the same round's inputs; a baseline is timed alone on one set of inputs."""
    from avo.evaluate.timing import make_clock
    from avo.task import grid_shapes, reference_attention

    seen = {"program": [], "incumbent": [], "base": []}

    def recorder(name):
        def fn(q, k, v, *, causal, sm_scale):
            seen[name].append((q.data_ptr(), k.data_ptr(), v.data_ptr()))
            return reference_attention(q, k, v, causal=causal, sm_scale=sm_scale).to(q.dtype)
        return fn

    settings.repeats, settings.warmup = repeats, 2
    d = tmp_path / "p"
    d.mkdir()
    (d / "kernel.py").write_text(textwrap.dedent(EXPLOITS["caches_outputs"]))
    worker = W.Worker(d, task, grid, settings, "cpu", tmp_path / "progress.json")
    worker.clock = make_clock("cpu")
    shape = grid_shapes(task, grid)[0]
    if pool_sets:
        set_bytes = 2 * shape.batch * shape.seqlen * (shape.heads_q + 2 * shape.heads_kv) * shape.head_dim
        monkeypatch.setattr(W, "INPUT_POOL_CPU_BYTES", int(pool_sets * set_bytes / W.INPUT_POOL_FRACTION))
    stats = worker.measure("timing", shape, {n: recorder(n) for n in seen}, seed=1, validate=True)
    assert set(stats) == set(seen)
    warm, timed = seen["program"][:settings.warmup], seen["program"][settings.warmup:]
    assert len(timed) == repeats and len(set(timed)) == repeats
    assert not set(timed) & set(warm)  # warm-up inputs are not reused
    assert len({t[0] for t in timed}) == (pool_sets or 3)  # q buffers are pooled, combinations are not
    assert seen["incumbent"][settings.warmup:] == timed
    assert len(set(seen["base"])) == 1 and len(seen["base"]) == settings.warmup + repeats


def test_lowered_precision_is_rejected(run_exploit):
    res = run_exploit("fp8")
    assert not res["correct"] and res["score"] == 0.0
    assert "too imprecise" in res["error"] or "out of tolerance" in res["error"]


def test_relative_l2_bound_catches_what_elementwise_tolerance_lets_through(make_program, tmp_path, task, grid,
                                                                          settings, monkeypatch):
    """A uniform 0.5% bias passes |out - ref| <= atol + rtol |ref| but not a tighter whole-tensor bound."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    d = tmp_path / "biased"
    d.mkdir()
    (d / "kernel.py").write_text(textwrap.dedent(CORRECT + '''
def attention(q, k, v, *, causal, sm_scale):
    return (_attn(q, k, v, causal, sm_scale).float() * 1.02).to(q.dtype)
'''))
    task.rel_l2 = 5e-3
    res = W.Worker(d, task, grid, settings, "cpu", tmp_path / "p.json").run()
    assert not res["correct"] and "relative L2 error" in res["error"]
    task.rel_l2 = 5e-2
    res = W.Worker(d, task, grid, settings, "cpu", tmp_path / "p.json").run()
    assert res["correct"] and all(0.01 < c["rel_l2"] < 0.05 for c in res["configs"])


def test_correct_program_passes_every_honesty_check(make_program, tmp_path, task, grid, settings, monkeypatch):
    monkeypatch.setattr(sys, "path", list(sys.path))
    res = W.Worker(make_program("correct"), task, grid, settings, "cpu", tmp_path / "p.json").run()
    assert res["correct"] and res["flags"] == []
    assert all(c["rel_l2"] < 1e-3 and c["tol_rel_l2"] == task.rel_l2 for c in res["configs"])


def test_faster_than_peak_is_rejected_and_far_above_baselines_is_flagged():
    reject, flags = speed_verdict({"a": 900.0}, peak=800.0, baselines={"a": {"cudnn": 600.0}}, review_factor=1.3)
    assert reject and "exceeds the device's measured matrix peak of 800.0" in reject
    reject, flags = speed_verdict({"a": 790.0, "b": 500.0}, peak=800.0,
                                  baselines={"a": {"cudnn": 600.0, "fa2": 300.0}, "b": {"cudnn": 600.0}},
                                  review_factor=1.3)
    assert reject is None and len(flags) == 1 and flags[0].startswith("review: a at 790.0 TFLOPS is 1.32x")
    assert speed_verdict({"a": 500.0}, peak=None, baselines={}, review_factor=1.3) == (None, [])


def test_forbidden_op_pattern():
    for op in ("aten::_scaled_dot_product_flash_attention", "aten::_scaled_dot_product_cudnn_attention",
               "aten::_efficient_attention_forward", "aten::_flash_attention_forward",
               "aten::scaled_dot_product_attention", "aten::_fused_sdp_choice"):
        assert FORBIDDEN_OP.match(op), op
    for op in ("aten::bmm", "aten::softmax", "aten::_softmax", "aten::mm", "aten::exp2", "myext::attention"):
        assert not FORBIDDEN_OP.match(op), op


SIDE_STREAM = CORRECT.replace("import torch", "import torch\n_side = None") + '''
def attention(q, k, v, *, causal, sm_scale):
    global _side
    _side = _side or torch.cuda.Stream()
    _side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(_side):
        out = _attn(q, k, v, causal, sm_scale)
    return out  # the caller's stream never waits: an event pair on it alone would time ~nothing
'''


@pytest.mark.gpu
def test_side_stream_work_is_timed(tmp_path, monkeypatch):
    from avo.evaluate.settings import EvalSettings
    from avo.task import Grid, GridPoint, Task

    monkeypatch.setattr(sys, "path", list(sys.path))
    task = Task(name="t", heads_q=8, heads_kv=8, head_dim=64, causal=False, dtype="float16")
    grid = Grid(name="g", configs=[GridPoint(4, 1024)])
    settings = EvalSettings(device="cuda", trials=1, warmup=2, repeats=10, odd_seqlens=[37], baselines=[],
                            baseline_cache=False)
    times = {}
    for name, source in (("same", CORRECT), ("side", SIDE_STREAM)):
        d = tmp_path / name
        d.mkdir()
        (d / "kernel.py").write_text(textwrap.dedent(source))
        res = W.Worker(d, task, grid, settings, "cuda", tmp_path / "p.json").run()
        assert res["correct"], res["error"]
        times[name] = res["configs"][0]["ms"]
    assert times["side"] > 0.7 * times["same"], times

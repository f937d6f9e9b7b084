"""The worker's cascade, run in-process (fast: no child process, no second torch import).

Behaviour that needs the child process (timeouts, signals, isolation) is in test_evaluate.py.
"""
import json
import math
import sys

import pytest
import torch

from avo.evaluate import worker as W
from avo.task import Shape, reference_attention


@pytest.fixture
def run(tmp_path, monkeypatch, task, grid, settings):
    monkeypatch.setattr(sys, "path", list(sys.path))  # the worker puts the program dir on sys.path

    def run(program_dir, task=task, grid=grid, settings=settings):
        return W.Worker(program_dir, task, grid, settings, "cpu", tmp_path / "progress.json").run()

    return run


def test_correct_program_passes_every_stage(make_program, run, task, tmp_path):
    res = run(make_program("correct"))
    assert (res["stage"], res["correct"], res["error"]) == ("done", True, None)
    assert [c["label"] for c in res["configs"]] == ["B1_S64_H4/2_D32", "B2_S33_H4/2_D32"]
    for c in res["configs"]:
        assert 0.0 <= c["max_err"] <= 1e-2
        assert (c["tol_atol"], c["tol_rtol"]) == (task.atol, task.rtol)
        assert c["ms"] > 0 and c["tflops"] > 0
        assert c["spread_ms"]["min"] <= c["ms"] <= c["spread_ms"]["max"]
        assert c["spread_ms"]["rel_iqr"] >= 0 and c["spread_ms"]["rel_range"] >= 0
    assert res["score"] > 0
    assert res["device"]["kind"] == "cpu" and res["device"]["torch"]
    assert json.loads((tmp_path / "progress.json").read_text())["stage"] == "done"
    json.dumps(res)  # plain JSON


def test_wrong_program_is_reported_with_its_error(make_program, run):
    res = run(make_program("wrong"))
    assert (res["stage"], res["correct"], res["score"]) == ("correctness_small", False, 0.0)
    assert "wrong result on B1_S1_H4/2_D32" not in res["error"]  # a single key: any scale gives the right answer
    assert "wrong result on B1_S37_H4/2_D32 causal float16, trial 0" in res["error"]
    assert "max abs error" in res["error"] and "tolerance" in res["error"]
    assert all(c["tflops"] == 0.0 and c["ms"] is None for c in res["configs"])


def test_wrong_only_at_grid_lengths_fails_at_correctness_grid(make_program, run):
    res = run(make_program("wrong_long"))
    assert res["stage"] == "correctness_grid" and "B1_S64_H4/2_D32" in res["error"]


def test_exception_reaches_the_result_with_the_programs_traceback(make_program, run):
    res = run(make_program("raises"))
    assert res["stage"] == "correctness_small"
    assert "attention raised on B1_S1_H4/2_D32" in res["error"]
    assert "RuntimeError: boom: tile too large" in res["error"]
    assert "kernel.py" in res["error"] and "worker.py" not in res["error"]


@pytest.mark.parametrize("name, message", [
    ("modifies_inputs", "modified its input(s) k in place"),
    ("subclass", "returned avo_program_"),
    ("nan", "NaN/Inf element(s)"),
    ("wrong_dtype", "dtype torch.float32, expected torch.float16"),
])
def test_invalid_outputs_are_refused(make_program, run, name, message):
    res = run(make_program(name))
    assert res["stage"] == "correctness_small" and not res["correct"]
    assert message in res["error"]


def test_subclass_is_named(make_program, run):
    assert "Sneaky, expected a plain torch.Tensor" in run(make_program("subclass"))["error"]


def test_a_program_that_stops_computing_when_timed_is_caught(make_program, run):
    res = run(make_program("lazy_when_timed"))
    assert res["stage"] == "timing" and not res["correct"] and res["score"] == 0.0
    assert "timed calls (round" in res["error"] and "wrong result" in res["error"]


@pytest.mark.parametrize("name, message", [
    ("syntax_error", "SyntaxError"),
    ("no_attention", "kernel.py does not define `attention`"),
])
def test_compile_failures(make_program, run, name, message):
    res = run(make_program(name))
    assert res["stage"] == "compile" and message in res["error"]


def test_worker_runs_static_checks_itself(make_program, run):
    res = run(make_program("sdpa"))
    assert res["stage"] == "static" and "kernel.py:5:" in res["error"]


def test_error_text_is_trimmed(make_program, run, settings):
    settings.log_chars = 200
    res = run(make_program("raises"), settings=settings)
    assert "chars elided" in res["error"] and len(res["error"]) < 300


# --- inputs and reference --------------------------------------------------------------------------------

SHAPE = Shape(batch=2, seqlen=128, heads_q=4, heads_kv=2, head_dim=64, causal=False, dtype="float16")


def test_inputs_are_fresh_per_seed_and_deterministic():
    a, b, a2 = (W.make_inputs(SHAPE, seed, 0, "cpu") for seed in (1, 2, 1))
    assert not torch.equal(a["q"], b["q"])
    assert all(torch.equal(a[n], a2[n]) for n in "qkv")
    assert a["q"].dtype == torch.float16 and a["q"].shape == (2, 128, 4, 64) and a["k"].shape == (2, 128, 2, 64)
    assert all(t.is_contiguous() for t in a.values())


def test_peaked_heads_alternate_and_make_the_softmax_far_from_uniform():
    def top_prob(trial):
        x = W.make_inputs(SHAPE, 7, trial, "cpu")
        q, k = x["q"].float().transpose(1, 2), x["k"].float().transpose(1, 2).repeat_interleave(2, 1)
        p = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(SHAPE.head_dim), -1)
        return p.max(-1).values.mean(dim=(0, 2))  # mean top probability per head

    t0, t1 = top_prob(0), top_prob(1)
    assert (t0[0::2] > 0.5).all() and (t0[1::2] < 0.5).all()  # trial 0: even heads peaked
    assert (t1[1::2] > 0.5).all() and (t1[0::2] < 0.5).all()  # trial 1: odd heads
    assert (t0[1::2] > 10 / SHAPE.seqlen).all()  # outlier keys: even plain heads are not uniform


@pytest.mark.parametrize("budget_heads", [3, 1, 0])  # whole GQA groups per chunk; one head; below one head
def test_chunked_reference_matches_reference(monkeypatch, budget_heads):
    shape = Shape(batch=2, seqlen=40, heads_q=6, heads_kv=2, head_dim=16, causal=True, dtype="float32")
    x = W.make_inputs(shape, 0, 0, "cpu")
    monkeypatch.setattr(W, "REFERENCE_BUDGET_BYTES", budget_heads * 12 * 40 * 40)
    out = W.chunked_reference(x["q"], x["k"], x["v"], causal=True, sm_scale=0.25)
    ref = reference_attention(x["q"], x["k"], x["v"], causal=True, sm_scale=0.25)
    torch.testing.assert_close(out, ref)

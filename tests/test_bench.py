"""`avo bench`: statistics, table, plot, target resolution and exit codes (with a fake avo.evaluate.bench),
plus one slow end-to-end run of the real bench on the CPU smoke grid."""
import json
import math

import pytest

import avo.evaluate
from avo import PROJECT_ROOT
from avo.cli import main
from avo.lineage import Lineage
from avo.report import bench_summary, bench_table, plot_bench

SEED = PROJECT_ROOT / "seeds" / "triton_fa"
CORRECT_KERNEL = "def attention(q, k, v, *, causal, sm_scale):\n    return q  # not used by the fake bench\n"


def fake_result(correct=True, error=None):
    return {
        "task": "mha_causal", "grid": "smoke", "device": {"kind": "cuda", "name": "NVIDIA H100 80GB HBM3"},
        "correct": correct, "error": error, "impls": ["program", "cudnn", "fa2"],
        "configs": [
            {"label": "B32_S1024_H16/16_D128", "shape": {"batch": 32, "seqlen": 1024},
             "tflops": {"program": [100.0, 110.0, 120.0], "cudnn": [50.0, 50.0, 50.0], "fa2": [200.0, 200.0, 200.0]}},
            {"label": "B16_S2048_H16/16_D128", "shape": {"batch": 16, "seqlen": 2048},
             "tflops": {"program": [400.0, 400.0, 400.0], "cudnn": [100.0, 200.0, 300.0], "fa2": [400.0, 400.0, 400.0]}},
        ],
    }


def test_summary_statistics():
    s = bench_summary(fake_result(), program_label="mine")
    assert s["impls"] == ["program", "cudnn", "fa2"] and s["program"] == "mine" and s["reps"] == 3
    c0, c1 = s["configs"]
    assert c0["stats"]["program"]["mean"] == pytest.approx(110.0)
    assert c0["stats"]["program"]["std"] == pytest.approx(10.0)  # sample std (n - 1)
    assert c0["stats"]["cudnn"]["std"] == 0.0
    assert c1["stats"]["cudnn"]["mean"] == pytest.approx(200.0) and c1["stats"]["cudnn"]["std"] == pytest.approx(100.0)
    assert c0["speedup"] == {"cudnn": pytest.approx(2.2), "fa2": pytest.approx(0.55)}
    assert c1["speedup"] == {"cudnn": pytest.approx(2.0), "fa2": pytest.approx(1.0)}
    agg = s["aggregate"]
    assert agg["stats"]["program"]["mean"] == pytest.approx(math.sqrt(110 * 400))
    assert agg["stats"]["cudnn"]["mean"] == pytest.approx(math.sqrt(50 * 200))
    # The aggregate speedup is the ratio of geometric means (= geometric mean of the per-config speedups).
    assert agg["speedup"]["cudnn"] == pytest.approx(math.sqrt(2.2 * 2.0))
    assert agg["speedup"]["fa2"] == pytest.approx(math.sqrt(0.55 * 1.0))
    # Its spread: the std of the per-repetition geometric means.
    per_rep = [math.sqrt(50 * 100), math.sqrt(50 * 200), math.sqrt(50 * 300)]
    mean = sum(per_rep) / 3
    std = math.sqrt(sum((x - mean) ** 2 for x in per_rep) / 2)
    assert agg["stats"]["cudnn"]["std"] == pytest.approx(std)


def test_summary_of_a_failed_program_and_missing_baselines():
    r = fake_result(correct=False, error="max error 0.5 > tolerance")
    for c in r["configs"]:
        c["tflops"]["program"] = [0.0, 0.0, 0.0]
        del c["tflops"]["fa2"]
    s = bench_summary(r)
    assert not s["correct"]
    assert s["configs"][0]["speedup"]["cudnn"] == 0.0
    assert s["configs"][0]["speedup"]["fa2"] is None and s["configs"][0]["stats"]["fa2"]["mean"] is None
    assert s["aggregate"]["stats"]["program"]["mean"] == 0.0
    table = bench_table(s)
    assert "FAILED correctness: max error 0.5" in table
    assert "-" in table.splitlines()[3].split()


def test_table_contents():
    table = bench_table(bench_summary(fake_result(), program_label="mine"))
    lines = table.splitlines()
    assert "mha_causal on NVIDIA H100 80GB HBM3" in lines[0] and "3 repetitions" in lines[0]
    assert lines[1].split() == ["configuration", "mine", "cuDNN", "FA2", "vs", "cuDNN", "vs", "FA2"]
    row = lines[3]
    assert row.startswith("B32_S1024_H16/16_D128")
    assert "110.0 ± 10.0" in row and "50.00 ± 0.00" in row and "200.0 ± 0.0" in row and "2.20x" in row and "0.55x" in row
    assert lines[-1].startswith("geomean") and f"{math.sqrt(2.2 * 2.0):.2f}x" in lines[-1]
    assert "FAILED" not in table


def test_plot_written(tmp_path):
    import matplotlib.image

    path = plot_bench(bench_summary(fake_result()), tmp_path / "bench.png")
    assert path == tmp_path / "bench.png" and path.stat().st_size > 0
    assert matplotlib.image.imread(path).size > 0


@pytest.fixture
def fake_bench(monkeypatch):
    """Replaces avo.evaluate.bench; records its calls; returns fake_result() (or `fake_bench.result`)."""

    class Fake:
        calls = []
        result = None

        def __call__(self, program_dir, task, grid, settings, *, reps=10, gpu=None, baselines=True):
            files = sorted(p.name for p in program_dir.iterdir())
            self.calls.append({"program_dir": program_dir, "files": files, "kernel": (program_dir / "kernel.py").read_text(),
                               "task": task, "grid": grid, "reps": reps, "gpu": gpu, "baselines": baselines})
            result = self.result or fake_result()
            return {**result, "task": task.name, "grid": grid.name}

    fake = Fake()
    monkeypatch.setattr(avo.evaluate, "bench", fake, raising=False)
    return fake


def test_bench_program_dir(fake_bench, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["bench", str(SEED), "benchmark=smoke", "task=gqa4_causal", "--reps", "3", "--out", str(out)]) == 0
    call = fake_bench.calls[-1]
    assert call["program_dir"] == SEED and call["reps"] == 3 and call["baselines"] is True
    assert call["task"].name == "gqa4_causal" and call["grid"].name == "smoke"
    stdout = capsys.readouterr().out
    assert "B32_S1024_H16/16_D128" in stdout and "geomean" in stdout and str(out / "bench.json") in stdout
    data = json.loads((out / "bench.json").read_text())
    assert data["task"] == "gqa4_causal" and data["configs"][0]["tflops"]["program"] == [100.0, 110.0, 120.0]
    assert data["summary"]["configs"][0]["stats"]["program"]["mean"] == pytest.approx(110.0)
    assert data["summary"]["aggregate"]["speedup"]["cudnn"] == pytest.approx(math.sqrt(4.4))
    assert data["source"] == {"kind": "program", "target": str(SEED), "program_dir": str(SEED)}
    assert (out / "bench.png").stat().st_size > 0


def test_bench_default_out_dir_and_no_baselines(fake_bench, monkeypatch, tmp_path, capsys):
    monkeypatch.setattr("avo.cli.bench_output_root", lambda: tmp_path / "outputs" / "bench")
    assert main(["bench", str(SEED), "benchmark=smoke", "--no-baselines"]) == 0
    assert fake_bench.calls[-1]["baselines"] is False and fake_bench.calls[-1]["reps"] == 10
    (run,) = (tmp_path / "outputs" / "bench" / "mha_causal").iterdir()
    assert (run / "bench.json").is_file() and (run / "bench.png").is_file()


@pytest.fixture
def run_dir(tmp_path):
    """A run directory with versions v0 (the seed), v1 (faster) and v2 (incorrect), evolved for gqa8_causal."""
    d = tmp_path / "run"
    prog = tmp_path / "prog"
    prog.mkdir()
    with Lineage(d) as lineage:
        for n, (score, correct) in enumerate([(1.0, True), (2.0, True), (0.0, False)]):
            (prog / "kernel.py").write_text(CORRECT_KERNEL + f"VERSION = {n}\n")
            lineage.commit(prog, {"score": score, "correct": correct, "task": "gqa8_causal", "grid": "smoke"},
                           message=f"version {n}")
    return d


@pytest.mark.parametrize("ref,expected", [("@v1", 1), ("", 1), ("@best", 1), ("@latest", 2), ("@v0", 0)])
def test_bench_run_dir_versions(fake_bench, run_dir, tmp_path, ref, expected, capsys):
    assert main(["bench", f"{run_dir}{ref}", "benchmark=smoke", "--out", str(tmp_path / "o")]) == 0
    call = fake_bench.calls[-1]
    assert f"VERSION = {expected}" in call["kernel"]
    assert ".avo" not in call["files"]
    assert call["task"].name == "gqa8_causal"  # the task the run was evolved for
    err = capsys.readouterr().err
    assert "task=gqa8_causal" in err
    data = json.loads((tmp_path / "o" / "bench.json").read_text())
    assert data["source"]["version"] == f"main/v{expected}" and data["summary"]["program"] == f"run@main/v{expected}"
    assert not call["program_dir"].exists()  # the exported copy is gone


def test_bench_run_dir_by_sha_and_task_override(fake_bench, run_dir, tmp_path):
    with Lineage(run_dir) as lineage:
        v0 = lineage.resolve("v0")
    assert main(["bench", f"{run_dir}@{v0.sha[:8]}", "task=mha_noncausal", "benchmark=smoke",
                 "--out", str(tmp_path / "o")]) == 0
    assert "VERSION = 0" in fake_bench.calls[-1]["kernel"] and fake_bench.calls[-1]["task"].name == "mha_noncausal"


def test_bench_failed_program_exits_1(fake_bench, tmp_path, capsys):
    fake_bench.result = fake_result(correct=False, error="correctness_grid: max error 0.71 > 0.02 on B2_S64")
    assert main(["bench", str(SEED), "benchmark=smoke", "--out", str(tmp_path / "o")]) == 1
    captured = capsys.readouterr()
    assert "max error 0.71" in captured.err
    assert (tmp_path / "o" / "bench.json").is_file()


@pytest.mark.parametrize("target,message", [
    ("{tmp}/nonexistent", "does not exist: expected a program directory"),
    ("{tmp}", "is neither a program directory"),
    ("{seed}@v1", "is not a run directory"),
    ("{run}@v9", "unknown version 'v9'"),
    ("{run}@", "nothing after '@'"),
])
def test_bench_target_errors_exit_2(fake_bench, run_dir, tmp_path, capsys, target, message):
    target = target.format(tmp=tmp_path, seed=SEED, run=run_dir)
    assert main(["bench", target, "benchmark=smoke", "--out", str(tmp_path / "o")]) == 2
    assert message in capsys.readouterr().err
    assert not fake_bench.calls


@pytest.mark.parametrize("args,message", [
    (["--reps", "0"], "at least 1 repetition"),
    (["task=nope"], "Available options in 'task'"),
    (["--reps", "x"], "invalid int value"),
])
def test_bench_usage_errors_exit_2(fake_bench, tmp_path, capsys, args, message):
    assert main(["bench", str(SEED), "benchmark=smoke", *args, "--out", str(tmp_path / "o")]) == 2
    assert message in capsys.readouterr().err


def test_bench_missing_from_evaluator_is_a_usage_error(monkeypatch, capsys):
    monkeypatch.delattr(avo.evaluate, "bench", raising=False)
    assert main(["bench", str(SEED), "benchmark=smoke"]) == 2
    assert "no bench()" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(avo.evaluate, "bench"), reason="avo.evaluate.bench is not there yet")
def test_real_bench_on_cpu_smoke(tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["bench", str(SEED), "benchmark=smoke", "evaluator.device=cpu", "evaluator.trials=1",
                 "evaluator.odd_seqlens=[37]", "evaluator.warmup=1", "--reps", "2", "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err[-3000:]
    data = json.loads((out / "bench.json").read_text())
    assert data["correct"] and data["impls"][0] == "program"
    assert len(data["configs"]) == 2
    for c in data["configs"]:
        assert len(c["tflops"]["program"]) == 2 and all(t > 0 for t in c["tflops"]["program"])
    assert data["summary"]["aggregate"]["stats"]["program"]["mean"] > 0
    assert (out / "bench.png").stat().st_size > 0
    assert "geomean" in captured.out

"""End to end through run.py on the CPU (the smoke grid, the Triton seed under the interpreter)."""
import json
import os
import subprocess
import sys

import pytest

from avo import PROJECT_ROOT


def run(*overrides, cwd=PROJECT_ROOT, timeout=600):
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    env.pop("WANDB_API_KEY", None)
    return subprocess.run([sys.executable, str(PROJECT_ROOT / "run.py"), *overrides], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


FAST = ["task=mha_causal", "agent=heuristic", "benchmark=smoke", "evaluator.trials=1", "evaluator.repeats=2",
        "evaluator.warmup=1", "evaluator.odd_seqlens=[37]", "evolve.calibration=1"]


def test_cpu_run_commits_scores_logs_and_continues(tmp_path):
    run_dir = tmp_path / "run"
    proc = run(*FAST, "budget.max_attempts=2", f"hydra.run.dir={run_dir}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"Results: {run_dir}" in proc.stdout
    # The lineage: the seed committed and scored as main/v0.
    tags = subprocess.run(["git", "-C", str(run_dir / "lineage"), "tag"], capture_output=True, text=True).stdout
    assert "main/v0" in tags.split()
    score = json.loads(subprocess.run(["git", "-C", str(run_dir / "lineage"), "show", "main/v0:.avo/score.json"],
                                      capture_output=True, text=True).stdout)
    assert score["correct"] and score["score"] > 0 and score["grid"] == "smoke"
    attempts = [json.loads(line) for line in (run_dir / "attempts.jsonl").read_text().splitlines()]
    assert [a["n"] for a in attempts] == [1, 2, 3, 4] and attempts[0]["outcome"] == "seed"
    # Before the search, the seed timed alongside itself: the noise the acceptance margin is derived from.
    assert attempts[1]["outcome"] == "calibration" and attempts[1]["parent"] == "main/v0"
    assert abs(attempts[1]["paired_noise"]) < 1 and "noise calibration 1/1" in proc.stdout
    assert all(a["outcome"] in ("accepted", "rejected") for a in attempts[2:])
    refs = subprocess.run(["git", "-C", str(run_dir / "lineage"), "for-each-ref", "refs/attempts"],
                          capture_output=True, text=True).stdout
    assert len(refs.splitlines()) == 4  # every attempt, calibration included, is kept as a commit
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["best_score"] > 0 and summary["attempts"] == 2 and summary["evaluations"] == 4 and summary["wandb_run_id"]
    for name in ("versions.csv", "attempts.csv", "progress.png", "best/kernel.py"):
        assert (run_dir / name).is_file(), name
    offline = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(offline) == 1 and summary["wandb_run_id"] in offline[0].name
    assert "best v" in proc.stdout and "left" in proc.stdout  # progress lines: best score, time left

    # Re-running on the same directory continues: nothing lost, numbers continue, same W&B run.
    again = run(*FAST, "budget.max_attempts=3", f"hydra.run.dir={run_dir}")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "continuing" in again.stdout
    attempts = [json.loads(line) for line in (run_dir / "attempts.jsonl").read_text().splitlines()]
    assert [a["n"] for a in attempts] == [1, 2, 3, 4, 5]  # and no second calibration
    assert json.loads((run_dir / "summary.json").read_text())["wandb_run_id"] == summary["wandb_run_id"]


@pytest.mark.parametrize("overrides,message", [
    (["seed=nope"], "Available options in 'seed'"),
    (["seed.name=nope"], "Available seeds: "),
    (["task=mha"], "Available options in 'task'"),
    (["benchmark=tiny"], "Available options in 'benchmark'"),
    (["budget.minutes=0"], "budget is zero"),
    (["budget.hours=-1"], "negative"),
    (["budget.max_versions=0"], "at least 1"),
    (["evolve.calibration=-1"], "must be 0 or more"),
    (["evolve.noise_margin=2"], "must be a fraction"),
    (["benchmark=paper", "evaluator.device=cpu"], "needs a GPU"),
    (["evaluator.device=tpu", "benchmark=smoke"], "not one of"),
])
def test_config_errors_are_one_clear_message(tmp_path, overrides, message):
    if not any(o.startswith("benchmark=") for o in overrides):
        overrides = [*overrides, "benchmark=smoke"]
    proc = run(*overrides, "logger=none", f"hydra.run.dir={tmp_path / 'run'}", timeout=120)
    assert proc.returncode != 0
    assert message in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr


def test_seed_without_kernel_py(tmp_path):
    empty = tmp_path / "empty_seed"
    empty.mkdir()
    proc = run("benchmark=smoke", "logger=none", f"seed.dir={empty}", f"hydra.run.dir={tmp_path / 'run'}",
               timeout=120)
    assert proc.returncode == 2 and "has no kernel.py" in proc.stderr and "Traceback" not in proc.stderr


def test_broken_seed_stops_before_any_budget_is_spent(tmp_path):
    seed = tmp_path / "broken"
    seed.mkdir()
    (seed / "kernel.py").write_text("def attention(q, k, v, *, causal, sm_scale):\n    return q * 0\n")
    proc = run(*FAST, "logger=none", f"seed.dir={seed}", f"hydra.run.dir={tmp_path / 'run'}", timeout=300)
    assert proc.returncode == 2 and "fails the evaluator" in proc.stderr, proc.stderr[-2000:]


def test_unwritable_output_directory(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    proc = run("benchmark=smoke", "logger=none", f"hydra.run.dir={blocker / 'run'}", timeout=120)
    assert proc.returncode == 2 and "cannot write the run directory" in proc.stderr, proc.stderr[-2000:]


@pytest.mark.slow
def test_two_job_sweep_has_two_runs_in_one_group(tmp_path):
    sweep = tmp_path / "avo-sweep-7f3a"
    proc = run("-m", "task=mha_causal,mha_noncausal", *FAST[1:], "budget.max_attempts=1",
               f"hydra.sweep.dir={sweep}", timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir() and (p / "summary.json").exists())
    assert [p.name for p in jobs] == ["0_mha_causal_heuristic", "1_mha_noncausal_heuristic"]
    groups = set()
    for job in jobs:
        summary = json.loads((job / "summary.json").read_text())
        assert summary["best_score"] > 0
        groups.add(summary["wandb_group"])
        # The group reached the W&B run itself (its offline record holds it).
        run_file = next((job / "wandb").glob("offline-run-*/*.wandb"))
        assert sweep.name.encode() in run_file.read_bytes()
    assert groups == {sweep.name}


def test_seed_from_another_run_adapts_an_evolved_kernel_to_gqa(tmp_path):
    """seed.from_run=<run_dir> seed.ref=...: how an evolved MHA kernel becomes the seed of a GQA run."""
    mha = tmp_path / "mha"
    assert run(*FAST, "logger=none", "budget.max_attempts=1", f"hydra.run.dir={mha}").returncode == 0
    gqa = tmp_path / "gqa"
    proc = run(*[o for o in FAST if not o.startswith("task=")], "task=gqa4_causal", "logger=none",
               "budget.max_attempts=1", f"seed.from_run={mha}", "seed.ref=v0", f"hydra.run.dir={gqa}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    git = ["git", "-C"]
    seed_of_gqa = subprocess.run([*git, str(gqa / "lineage"), "show", "main/v0:kernel.py"], capture_output=True,
                                 text=True).stdout
    v0_of_mha = subprocess.run([*git, str(mha / "lineage"), "show", "main/v0:kernel.py"], capture_output=True,
                               text=True).stdout
    assert seed_of_gqa == v0_of_mha and "CONFIG" in seed_of_gqa
    score = json.loads(subprocess.run([*git, str(gqa / "lineage"), "show", "main/v0:.avo/score.json"],
                                      capture_output=True, text=True).stdout)
    assert score["task"] == "gqa4_causal" and score["correct"]  # re-evaluated on the new task

    bad = run("benchmark=smoke", "logger=none", f"seed.from_run={tmp_path / 'nope'}", f"hydra.run.dir={tmp_path / 'x'}",
              timeout=120)
    assert bad.returncode == 2 and "is not a run directory" in bad.stderr
    bad_ref = run("benchmark=smoke", "logger=none", f"seed.from_run={mha}", "seed.ref=v99",
                  f"hydra.run.dir={tmp_path / 'y'}", timeout=120)
    assert bad_ref.returncode == 2 and "seed.ref=v99" in bad_ref.stderr

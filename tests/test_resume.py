"""Stops and restarts through run.py on the CPU: SIGTERM ends a run cleanly, resume=<run_dir> continues it,
and SIGKILL at random moments loses or duplicates nothing."""
import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest

from avo import PROJECT_ROOT

FAST = ["task=mha_causal", "agent=heuristic", "benchmark=smoke", "seed=torch_blocked", "logger=none",
        "evaluator.trials=1", "evaluator.repeats=2", "evaluator.warmup=1", "evaluator.odd_seqlens=[37]",
        "evolve.calibration=1"]


def start(*overrides):
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    return subprocess.Popen([sys.executable, str(PROJECT_ROOT / "run.py"), *overrides], cwd=PROJECT_ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def git(run_dir, *args):
    return subprocess.run(["git", "-C", str(run_dir / "lineage"), *args], capture_output=True, text=True,
                          check=True).stdout


def snapshot(run_dir):
    """(tags {name: sha}, attempt numbers in attempts.jsonl, attempt refs, budget elapsed)."""
    if not (run_dir / "lineage" / ".git").exists():
        return {}, [], set(), 0.0
    tags = dict(line.split()[::-1] for line in git(run_dir, "for-each-ref", "--format=%(objectname) %(refname:short)",
                                                   "refs/tags").splitlines())
    lines = (run_dir / "attempts.jsonl").read_text().splitlines() if (run_dir / "attempts.jsonl").exists() else []
    numbers = [json.loads(line)["n"] for line in lines if line.strip()]
    refs = {int(r.rsplit("/", 1)[1]) for r in git(run_dir, "for-each-ref", "--format=%(refname)", "refs/attempts").split()}
    budget = run_dir / "state" / "budget.json"
    elapsed = json.loads(budget.read_text())["elapsed_s"] if budget.exists() else 0.0
    return tags, numbers, refs, elapsed


def check_consistent(run_dir, before):
    tags, numbers, refs, elapsed = snapshot(run_dir)
    versions = sorted(int(t.split("/v")[1]) for t in tags if t.startswith("main/v"))
    assert versions == list(range(len(versions))), f"version numbers not contiguous: {versions}"
    old_tags, old_numbers, _, old_elapsed = before
    assert all(tags.get(t) == sha for t, sha in old_tags.items()), "a committed version was lost or moved"
    assert len(set(tags.values())) == len(tags), "a version was committed twice"
    assert numbers == sorted(set(numbers)), f"attempt numbers not strictly increasing: {numbers}"
    assert numbers[:len(old_numbers)] == old_numbers, "attempt records were lost"
    assert set(numbers) == refs, f"attempts.jsonl {numbers} and refs/attempts {sorted(refs)} differ"
    assert elapsed >= old_elapsed, f"the budget went back: {old_elapsed} -> {elapsed}"
    return tags, numbers, refs, elapsed


def wait_for_attempts(run_dir, count, proc, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        path = run_dir / "attempts.jsonl"
        if path.exists() and len(path.read_text().splitlines()) >= count:
            return
        time.sleep(0.1)
    raise AssertionError(f"no {count} attempts within {timeout}s: {proc.poll()}")


def test_sigterm_stops_cleanly_and_resume_continues(tmp_path):
    run_dir = tmp_path / "run"
    proc = start(*FAST, "budget.max_attempts=50", f"hydra.run.dir={run_dir}")
    wait_for_attempts(run_dir, 3, proc)  # the seed, the noise calibration, a step
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out[-3000:]
    assert "SIGTERM received" in out and "stopping: SIGTERM received" in out
    summary = json.loads((run_dir / "summary.json").read_text())
    assert 1 <= summary["attempts"] < 10 and summary["evaluations"] == summary["attempts"] + 2
    assert (run_dir / "best" / "kernel.py").is_file()
    before = check_consistent(run_dir, ({}, [], set(), 0.0))
    # resume=<run_dir> alone: the original overrides are reused; later ones win.
    again = start(f"resume={run_dir}", f"budget.max_attempts={summary['attempts'] + 1}")
    out, _ = again.communicate(timeout=300)
    assert again.returncode == 0, out[-3000:]
    assert "continuing" in out and f"Results: {run_dir}" in out
    after = check_consistent(run_dir, before)
    assert len(after[1]) == len(before[1]) + 1  # one more step, and no second calibration


def test_resume_of_a_directory_that_is_no_run(tmp_path):
    proc = start(f"resume={tmp_path}")
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 2 and "not a run directory" in out


@pytest.mark.slow
def test_sigkill_at_random_moments_loses_and_duplicates_nothing(tmp_path):
    run_dir = tmp_path / "run"
    rng = random.Random(int(os.environ.get("AVO_KILL_SEED", "1234")))
    state = snapshot(run_dir)
    for kill in range(4):
        proc = start(*FAST, "budget.max_attempts=14", f"hydra.run.dir={run_dir}")
        time.sleep(rng.uniform(1.0, 9.0))
        proc.kill()
        proc.communicate(timeout=60)
        state = check_consistent(run_dir, state)
    proc = start(*FAST, "budget.max_attempts=14", f"hydra.run.dir={run_dir}")
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-3000:]
    tags, numbers, _, _ = check_consistent(run_dir, state)
    records = [json.loads(line) for line in (run_dir / "attempts.jsonl").read_text().splitlines()]
    assert sum(r.get("outcome") != "seed" for r in records) >= 14
    assert len(tags) >= 1 and json.loads((run_dir / "summary.json").read_text())["versions"] == len(tags)

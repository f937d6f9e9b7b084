"""Helpers for end-to-end tests that run `python run.py ...` on the CPU (the real evaluator, smoke grid).

CPU timings are noisy, so these runs set `evolve.noise_margin=0.5`: any correct candidate within 50% of
the best is accepted, which makes a commit deterministic (the acceptance rule itself is tested in
tests/test_evolve.py). `budget.max_versions=1` ends a run at its first commit.
"""
import json
import os
import subprocess
import sys

from avo import PROJECT_ROOT

FAST = ["task=mha_causal", "benchmark=smoke", "seed.name=triton_fa", "seed.dir=null", "evaluator.trials=1",
        "evaluator.repeats=2", "evaluator.warmup=1", "evaluator.odd_seqlens=[37]", "logger=none",
        "evolve.noise_margin=0.5", "budget.max_versions=1", "budget.minutes=10"]


def run_py(*overrides, timeout=600, env=None):
    env = {**os.environ, "WANDB_MODE": "disabled", **(env or {})}
    env.pop("OPENAI_API_KEY", None)
    return subprocess.run([sys.executable, str(PROJECT_ROOT / "run.py"), *overrides], cwd=PROJECT_ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def attempts(run_dir):
    return [json.loads(line) for line in (run_dir / "attempts.jsonl").read_text().splitlines()]


def git(run_dir, *args):
    return subprocess.run(["git", "-C", str(run_dir / "lineage"), *args], capture_output=True, text=True).stdout

"""`avo eval`: the result JSON on stdout, exit 0 when correct, 1 when not, 2 on a usage error."""
import json
import os
import subprocess
import sys

import pytest

from avo import PROJECT_ROOT
from avo.cli import main

SMALL = ["benchmark=smoke", "evaluator.trials=1", "evaluator.repeats=2", "evaluator.warmup=1",
         "evaluator.odd_seqlens=[37]"]


def avo(*args):
    return subprocess.run([sys.executable, "-m", "avo.cli", *args], cwd=PROJECT_ROOT, capture_output=True,
                          text=True, timeout=300, env={**os.environ})


def test_eval_seed_prints_result_and_exits_0():
    proc = avo("eval", str(PROJECT_ROOT / "seeds" / "triton_fa"), "task=gqa4_causal", *SMALL)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout)
    assert result["correct"] and result["score"] > 0 and result["task"] == "gqa4_causal"
    assert {c["shape"]["heads_q"] // c["shape"]["heads_kv"] for c in result["configs"]} == {4}


def test_eval_wrong_program_exits_1(tmp_path):
    (tmp_path / "kernel.py").write_text("def attention(q, k, v, *, causal, sm_scale):\n    return q.clone()\n")
    proc = avo("eval", str(tmp_path), *SMALL)
    assert proc.returncode == 1
    result = json.loads(proc.stdout)
    assert not result["correct"] and result["score"] == 0.0 and result["stage"].startswith("correctness")


@pytest.mark.parametrize("args,message", [
    ([], "the following arguments are required"),
    (["eval", "/nonexistent/program"], "does not exist"),
    (["eval", ".", "task=nope"], "Available options in 'task'"),
    (["eval", ".", "task.heads_qq=1"], "heads_qq"),
])
def test_usage_errors_exit_2(args, message, capsys):
    assert main(args) == 2
    assert message in capsys.readouterr().err

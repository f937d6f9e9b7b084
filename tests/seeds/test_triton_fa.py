"""The seed program `seeds/triton_fa`: correct on the CPU (Triton interpreter) for MHA and GQA, causal and not,
head_dim 64 and 128, odd lengths; and through the evaluator end to end.

TRITON_INTERPRET must be set before Triton is imported, so the seed is exercised in one child process that
runs every case and prints the results as JSON (one process start instead of one per case).
"""
import json
import os
import subprocess
import sys
import textwrap

import pytest

from avo import PROJECT_ROOT
from avo.evaluate import EvalSettings, evaluate
from avo.task import Grid, GridPoint, Task

SEED = PROJECT_ROOT / "seeds" / "triton_fa"

# Each group size with both causal modes and both head dims (pairwise, to keep the interpreter's time down).
CASES = [
    (1, True, 128), (1, False, 64),
    (4, True, 64), (4, False, 128),
    (8, True, 128), (8, False, 64),
]
# Blocks smaller than the lengths so that several query and key blocks, the unmasked key loop, the causal
# block skipping and BLOCK_N > BLOCK_M are all exercised; the interpreter's own blocks cover only a few.
BLOCKS = [(32, 16), (16, 32)]
LENGTHS = [1, 17, 50, 97]

SCRIPT = textwrap.dedent('''
    import json, math, sys, tempfile
    from pathlib import Path
    from avo.evaluate.settings import EvalSettings
    from avo.evaluate.worker import Worker, chunked_reference, make_inputs
    from avo.task import Grid, GridPoint, Shape, Task
    from avo.evaluate import checks

    seed, cases, blocks, lengths = Path(sys.argv[1]), json.loads(sys.argv[2]), json.loads(sys.argv[3]), json.loads(sys.argv[4])
    out = {"worker": {}, "blocks": []}
    grid = Grid(name="t", configs=[GridPoint(1, 64), GridPoint(2, 33)], dtype="float16", max_heads_kv=2)
    settings = EvalSettings(device="cpu", trials=1, warmup=0, repeats=1, odd_seqlens=[1, 37])
    progress = Path(tempfile.mkdtemp()) / "progress.json"
    for group, causal, dim in cases:
        task = Task(name="t", heads_q=2 * group, heads_kv=2, head_dim=dim, causal=causal, dtype="float16")
        res = Worker(seed, task, grid, settings, "cpu", progress).run()
        out["worker"][f"{group}-{causal}-{dim}"] = res

    sys.path.insert(0, str(seed))
    import kernel  # tune the seed's blocks directly
    kernel.INTERPRETER_BLOCKS = None
    for tma in (False, True):  # pointer loads, and the TMA descriptors Hopper uses
        kernel.TMA = tma
        for bm, bn in blocks:
            kernel.CONFIG.update(BLOCK_M=bm, BLOCK_N=bn, SHORT_BLOCK_M=bm, SHORT_BLOCK_N=bn)
            for seqlen in lengths:
                for causal in (True, False):
                    shape = Shape(1, seqlen, 4, 2, 64, causal, "float16")
                    x = make_inputs(shape, seqlen, 0, "cpu")
                    o = kernel.attention(x["q"], x["k"], x["v"], causal=causal, sm_scale=0.125)
                    ref = chunked_reference(x["q"], x["k"], x["v"], causal=causal, sm_scale=0.125)
                    err = checks.check_output(o, x["q"]) or checks.compare(o, ref, atol=2e-2, rtol=2e-2)[1]
                    out["blocks"].append([bm, bn, seqlen, causal, tma, err])
    print(json.dumps(out))
''')


@pytest.fixture(scope="module")
def interpreted():
    env = {**os.environ, "TRITON_INTERPRET": "1", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(SEED), json.dumps(CASES), json.dumps(BLOCKS), json.dumps(LENGTHS)],
        capture_output=True, text=True, env=env, cwd=PROJECT_ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("group, causal, dim", CASES)
def test_seed_is_correct_under_the_interpreter(interpreted, group, causal, dim):
    res = interpreted["worker"][f"{group}-{causal}-{dim}"]
    assert (res["stage"], res["error"]) == ("done", None)
    assert res["correct"] and res["score"] > 0
    for c in res["configs"]:
        assert c["shape"]["heads_q"] == 2 * group and c["shape"]["head_dim"] == dim
        assert c["max_err"] < 5e-3  # fp16 output rounding; well inside the task's 2e-2


@pytest.mark.parametrize("tma", [False, True])
@pytest.mark.parametrize("bm, bn", BLOCKS)
def test_seed_with_small_blocks_covers_every_path(interpreted, bm, bn, tma):
    rows = [r for r in interpreted["blocks"] if (r[0], r[1], r[4]) == (bm, bn, tma)]
    assert len(rows) == 2 * len(LENGTHS)
    assert [r for r in rows if r[5] is not None] == []


def test_short_rows_get_the_short_blocks(monkeypatch):
    """SHORT_* applies while a query row visits at most SHORT_KV keys on average (half the length if causal)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("triton_fa_kernel_blocks", SEED / "kernel.py")
    kernel = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(kernel)
    c = kernel.CONFIG
    short = {k: c["SHORT_" + k] for k in ("BLOCK_M", "BLOCK_N", "num_warps", "num_stages")}
    long = {k: c[k] for k in ("BLOCK_M", "BLOCK_N", "num_warps", "num_stages")}
    assert short != long
    n = c["SHORT_KV"]
    assert kernel.choose_blocks(n, False, "cuda") == short
    assert kernel.choose_blocks(n + 1, False, "cuda") == long
    assert kernel.choose_blocks(2 * n + 1, True, "cuda") == short  # (2n + 1) // 2 == n keys on average
    assert kernel.choose_blocks(2 * n + 2, True, "cuda") == long
    assert kernel.choose_blocks(n, False, "cpu")["BLOCK_M"] == kernel.INTERPRETER_BLOCKS["BLOCK_M"]


def test_seed_through_the_evaluator():
    task = Task(name="mha_causal", heads_q=16, heads_kv=16, head_dim=128, causal=True)
    grid = Grid(name="t", configs=[GridPoint(1, 64), GridPoint(2, 33)], dtype="float16", max_heads_kv=2)
    settings = EvalSettings(device="cpu", trials=1, warmup=1, repeats=2, odd_seqlens=[1, 37], timeout_s=120)
    res = evaluate(SEED, task, grid, settings)
    assert (res["stage"], res["correct"], res["error"]) == ("done", True, None), res["log"]
    assert res["score"] > 0 and res["device"]["triton"]


def test_seed_declares_tunables_and_a_config_within_them():
    ns = {}
    source = (SEED / "kernel.py").read_text()
    # CONFIG must stay a literal the heuristic operator can rewrite line by line.
    start = source.index("CONFIG = {\n")
    block = source[start:source.index("}\n", start) + 2]
    exec(block, ns)  # noqa: S102 - a dict literal from our own seed
    tunables_block = source[source.index("TUNABLES = {\n"):]
    exec(tunables_block[:tunables_block.index("}\n") + 2], ns)
    assert set(ns["CONFIG"]) == set(ns["TUNABLES"])
    assert all(ns["CONFIG"][k] in ns["TUNABLES"][k] for k in ns["CONFIG"])
    assert all(line.count(":") == 1 for line in block.splitlines()[1:-1])  # one key per line


@pytest.mark.gpu
@pytest.mark.parametrize("task_name, heads_q, heads_kv, causal", [
    ("mha_causal", 16, 16, True), ("gqa4_noncausal", 32, 8, False), ("gqa8_causal", 32, 4, True),
])
def test_seed_on_gpu_bf16(task_name, heads_q, heads_kv, causal):
    task = Task(name=task_name, heads_q=heads_q, heads_kv=heads_kv, head_dim=128, causal=causal)
    grid = Grid(name="gpu", configs=[GridPoint(2, 1024), GridPoint(1, 4096)])
    res = evaluate(SEED, task, grid, EvalSettings(device="cuda", timeout_s=300))
    assert (res["stage"], res["correct"], res["error"]) == ("done", True, None), res["log"]
    assert all(c["tflops"] > 10 for c in res["configs"])

"""Small programs for evaluator tests, written into tmp_path by the `make_program` fixture.

They are plain PyTorch (no Triton), so they run natively on the CPU and the tests stay fast.
"""
import textwrap

import pytest

from avo.evaluate.settings import EvalSettings
from avo.task import Grid, GridPoint, Task

# A correct attention in plain torch ops (what every "bad" program below starts from).
CORRECT = '''
import torch

def _attn(q, k, v, causal, sm_scale):
    group = q.shape[2] // k.shape[2]
    qf, kf, vf = (t.float().transpose(1, 2) for t in (q, k, v))
    kf = kf.repeat_interleave(group, dim=1)
    vf = vf.repeat_interleave(group, dim=1)
    s = qf @ kf.transpose(-1, -2) * sm_scale
    if causal:
        n = q.shape[1]
        s = s.masked_fill(torch.ones(n, n, dtype=torch.bool, device=q.device).triu(1), float("-inf"))
    return (s.softmax(-1) @ vf).transpose(1, 2).to(q.dtype).contiguous()

def attention(q, k, v, *, causal, sm_scale):
    return _attn(q, k, v, causal, sm_scale)
'''

PROGRAMS = {
    "correct": CORRECT,
    # Writes next to itself at import: only the evaluator's private copy may change.
    "correct_writes": CORRECT + '''
from pathlib import Path
(Path(__file__).parent / "scratch.txt").write_text("written by the program")
''',
    # Ignores sm_scale: right shape and dtype, wrong numbers.
    "wrong": CORRECT + '''
def attention(q, k, v, *, causal, sm_scale):
    return _attn(q, k, v, causal, 1.0)
''',
    "raises": CORRECT + '''
def attention(q, k, v, *, causal, sm_scale):
    raise RuntimeError("boom: tile too large")
''',
    "modifies_inputs": CORRECT + '''
def attention(q, k, v, *, causal, sm_scale):
    out = _attn(q, k, v, causal, sm_scale)
    k.zero_()
    return out
''',
    "subclass": CORRECT + '''
class Sneaky(torch.Tensor):
    pass

def attention(q, k, v, *, causal, sm_scale):
    return _attn(q, k, v, causal, sm_scale).as_subclass(Sneaky)
''',
    "nan": CORRECT + '''
def attention(q, k, v, *, causal, sm_scale):
    out = _attn(q, k, v, causal, sm_scale)
    out[0, 0, 0, 0] = float("nan")
    return out
''',
    "wrong_dtype": CORRECT + '''
def attention(q, k, v, *, causal, sm_scale):
    return _attn(q, k, v, causal, sm_scale).float()
''',
    # Right only while it is being checked: after the correctness calls it stops computing.
    "lazy_when_timed": CORRECT + '''
CALLS = [0]

def attention(q, k, v, *, causal, sm_scale):
    CALLS[0] += 1
    if CALLS[0] > 4:
        return torch.zeros_like(q)
    return _attn(q, k, v, causal, sm_scale)
''',
    # Right at small lengths, wrong from 64 on: must fail at stage correctness_grid.
    "wrong_long": CORRECT + '''
def attention(q, k, v, *, causal, sm_scale):
    return _attn(q, k, v, causal, sm_scale if q.shape[1] < 64 else 1.0)
''',
    "sdpa": '''
import torch

def attention(q, k, v, *, causal, sm_scale):
    return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal)
''',
    "syntax_error": CORRECT + '''
def attention(q, k, v, *, causal, sm_scale)
    return q
''',
    "no_attention": "import torch\n\ndef attn(q, k, v, *, causal, sm_scale):\n    return q\n",
    "kills_itself": CORRECT + '''
import os

def attention(q, k, v, *, causal, sm_scale):
    os.kill(os.getpid(), 9)
''',
    # Hangs in its first call after starting a sleeping grandchild (the string-built import evades the
    # static check on purpose: killing the whole process group must not depend on it). PID_FILE is replaced.
    "hangs": CORRECT + '''
import importlib, os, time

def attention(q, k, v, *, causal, sm_scale):
    child = importlib.import_module("sub" + "process").Popen(["sleep", "300"])
    with open(PID_FILE, "w") as f:
        f.write(f"{child.pid} {os.getpgid(0)}")
    time.sleep(300)
''',
}


@pytest.fixture
def make_program(tmp_path):
    """make_program(name, **replacements) -> a program directory holding PROGRAMS[name] as kernel.py."""

    def make(name, **replacements):
        source = PROGRAMS[name]
        for key, value in replacements.items():
            source = source.replace(key, value)
        d = tmp_path / name
        d.mkdir()
        (d / "kernel.py").write_text(textwrap.dedent(source))
        return d

    return make


@pytest.fixture
def task():
    return Task(name="gqa_test", heads_q=4, heads_kv=2, head_dim=32, causal=True, dtype="float16")


@pytest.fixture
def grid():
    return Grid(name="t", configs=[GridPoint(1, 64), GridPoint(2, 33)], dtype="float16", max_heads_kv=2)


@pytest.fixture
def settings():
    return EvalSettings(device="cpu", trials=1, warmup=1, repeats=2, odd_seqlens=[1, 37], timeout_s=60.0)

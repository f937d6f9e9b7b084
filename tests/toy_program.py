"""A toy program and a fake evaluator for the loop, harness and operator tests (fast, no kernel runs).

The program's CONFIG has two tunables; the fake score is A * B, and A == 3 is "incorrect".
"""
from avo.program import read_tunables

KERNEL = '''TUNABLES = {"A": [1, 2, 3, 4], "B": [1, 2]}
CONFIG = {
    "A": 1,
    "B": 1,
}


def attention(q, k, v, *, causal, sm_scale):
    return q
'''


def fake_evaluate(program_dir, grid="smoke"):
    """Score = A * B; A == 3 is 'incorrect'."""
    config = read_tunables(program_dir)[1]
    correct = config["A"] != 3
    score = float(config["A"] * config["B"]) if correct else 0.0
    return {"stage": "done" if correct else "correctness_grid", "correct": correct, "score": score, "grid": grid,
            "error": None if correct else "max error 1.0 > tolerance 0.02 at B1_S128",
            "configs": [{"label": "B1_S128", "tflops": score, "ms": 1.0, "max_err": 0.001 if correct else 1.0}]}

import random
import shutil
from dataclasses import dataclass
from pathlib import Path

from avo.operators import StepContext
from avo.operators.heuristic import HeuristicOperator, config_key
from avo.program import read_tunables

KERNEL = '''TUNABLES = {"A": [1, 2, 3], "B": ["x", "y"], "FIXED": [7]}
CONFIG = {
    "A": 1,
    "B": "x",
    "FIXED": 7,
}


def attention(q, k, v, *, causal, sm_scale):
    return q
'''


@dataclass
class FakeVersion:
    number: int
    dir: Path


@dataclass
class FakeVerdict:
    version: object
    reason: str = "fake"


class FakeHarness:
    def __init__(self):
        self.submitted = []

    def export(self, version, dest):
        shutil.copytree(version.dir, dest)
        return dest

    def submit(self, program_dir, **kw):
        self.submitted.append((read_tunables(program_dir)[1], kw))
        return FakeVerdict(version=None)


def ctx_for(tmp_path, history, step=1):
    parent_dir = tmp_path / "parent"
    if not parent_dir.exists():
        parent_dir.mkdir()
        (parent_dir / "kernel.py").write_text(KERNEL)
    ws = tmp_path / f"ws{step}"
    ws.mkdir()
    parent = FakeVersion(0, parent_dir)
    return StepContext(step=step, branch="main", parent=parent, best=parent, workspace=ws, harness=FakeHarness(),
                       history=history, rng=random.Random(step))


def test_step_submits_a_neighbour_within_tunables(tmp_path):
    ctx = ctx_for(tmp_path, [])
    outcome = HeuristicOperator(mutations=1).step(ctx)
    (config, kw), = ctx.harness.submitted
    assert outcome.attempts == 1 and not outcome.exhausted
    assert config["FIXED"] == 7 and config["A"] in (1, 2, 3) and config["B"] in ("x", "y")
    assert sum(config[k] != v for k, v in {"A": 1, "B": "x"}.items()) == 1  # a neighbour: one key changed
    assert kw["meta"]["config"] == config and kw["parent"] is ctx.parent and "heuristic:" in kw["message"]


def test_never_repeats_a_tried_config_then_reports_exhaustion(tmp_path):
    history, seen = [], set()
    op = HeuristicOperator(mutations=1, max_draws=50)
    for step in range(1, 7):
        ctx = ctx_for(tmp_path, history, step)
        outcome = op.step(ctx)
        if outcome.exhausted:
            break
        (config, _), = ctx.harness.submitted
        assert config_key(config) not in seen
        seen.add(config_key(config))
        history.append({"config": config})
    # 3 x 2 configurations, minus the parent's own: 5 to try, then exhausted.
    assert len(seen) == 5 and outcome.exhausted


def test_propose_returns_none_without_free_tunables():
    assert HeuristicOperator().propose({"A": [1]}, {"A": 1}, set(), random.Random(0)) is None


def test_covers_the_whole_space_before_declaring_it_exhausted():
    """Configurations that differ from the parent in some keys but not all must be reachable too."""
    tunables = {"A": [1, 2, 3], "B": [1, 2, 3], "C": [1, 2]}
    op = HeuristicOperator(mutations=1, max_draws=20)
    rng = random.Random(0)
    config, tried = {"A": 1, "B": 1, "C": 1}, set()
    tried.add(config_key(config))
    # The parent stays the same (as when nothing beats it): every other point must still come up.
    while (candidate := op.propose(tunables, config, tried, rng)) is not None:
        assert config_key(candidate) not in tried
        tried.add(config_key(candidate))
    assert len(tried) == 3 * 3 * 2

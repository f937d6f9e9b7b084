"""The supervisor: each trigger, its state across restarts, and widening the heuristic's mutation."""
import json
from types import SimpleNamespace

from test_evolve import RecordingTracker
from toy_program import KERNEL, fake_evaluate

from avo.budget import Budget
from avo.evolve import Evolution, Harness
from avo.lineage import Lineage
from avo.operators.heuristic import HeuristicOperator
from avo.population.single import SingleLineage
from avo.supervisor import (
    Supervisor,
    SupervisorSettings,
    failure_kind,
    parse_directions,
)


def version(n, score):
    return SimpleNamespace(tag=f"main/v{n}", score=score, result={"score": score, "configs": []}, notes="",
                           message=f"v{n}")


def attempt(n, outcome="rejected", correct=True, stage="done", error=None, elapsed=0.0, version=None):
    return {"n": n, "outcome": outcome, "correct": correct, "stage": stage, "error": error, "elapsed_s": elapsed,
            "score": 1.0 if correct else 0.0, "version": version}


def quiet(**kw):
    base = dict(stall_attempts=None, stall_hours=None, repeat_failures=None, plateau_versions=None, cooldown_attempts=0)
    return SupervisorSettings(**{**base, **kw})


def test_stall_attempts(tmp_path):
    sup = Supervisor(quiet(stall_attempts=3), tmp_path)
    seed = attempt(1, "seed", version="main/v0")
    assert sup.check([seed, attempt(2), attempt(3)], [version(0, 1.0)], 10.0) is None
    trigger = sup.check([seed, attempt(2), attempt(3), attempt(4)], [version(0, 1.0)], 10.0)
    assert trigger[0] == "stall_attempts" and "3 attempts" in trigger[1]
    # A commit resets the count.
    assert sup.check([seed, attempt(2), attempt(3, "accepted", version="main/v1"), attempt(4)],
                     [version(0, 1.0), version(1, 2.0)], 10.0) is None


def test_stall_hours(tmp_path):
    sup = Supervisor(quiet(stall_hours=1.0), tmp_path)
    history = [attempt(1, "seed", version="main/v0", elapsed=100.0), attempt(2, elapsed=200.0)]
    assert sup.check(history, [version(0, 1.0)], 3000.0) is None
    assert sup.check(history, [version(0, 1.0)], 3800.0)[0] == "stall_hours"


def test_repeated_failure_normalises_numbers_and_paths(tmp_path):
    sup = Supervisor(quiet(repeat_failures=3), tmp_path)
    fails = [attempt(i, correct=False, stage="compile", error=f"error at /tmp/avo-eval-{i}x/kernel.py:{i}: bad\nmore")
             for i in range(2, 5)]
    assert failure_kind(fails[0]) == failure_kind(fails[2]) == "compile: error at <path>:N: bad"
    trigger = sup.check([attempt(1, "seed", version="main/v0"), *fails], [version(0, 1.0)], 1.0)
    assert trigger[0] == "repeated_failure" and "compile: error at" in trigger[1]
    mixed = fails[:2] + [attempt(5, correct=False, stage="correctness_grid", error="max error 1.0")]
    assert sup.check(mixed, [version(0, 1.0)], 1.0) is None


def test_plateau_triggers_once_per_new_version(tmp_path):
    sup = Supervisor(quiet(plateau_versions=3, plateau_pct=1.0), tmp_path)
    versions = [version(0, 1.0), version(1, 10.0), version(2, 10.05), version(3, 10.08)]
    history = [attempt(1, "seed"), attempt(2)]
    assert sup.check(history, versions[:3], 1.0) is None  # 1.0 .. 10.05 is not a plateau
    trigger = sup.check(history, versions, 1.0)
    assert trigger[0] == "plateau" and "main/v1..main/v3" in trigger[1]
    sup.intervene(*trigger, step=3, attempts=history, versions=versions, elapsed_s=1.0)
    assert sup.check(history + [attempt(3)], versions, 1.0) is None  # the same plateau: once


def test_cooldown_and_state_restored(tmp_path):
    tracker = RecordingTracker()
    tracker.interventions = []
    tracker.log_intervention = tracker.interventions.append
    sup = Supervisor(quiet(stall_attempts=2, cooldown_attempts=5), tmp_path, tracker=tracker)
    history = [attempt(1, "seed", version="main/v0"), attempt(2), attempt(3)]
    guidance = sup.before_step(step=3, attempts=history, versions=[version(0, 1.0)], elapsed_s=5.0)
    assert "Move further from the parent" in guidance  # no model: widen, and say so
    assert [r["trigger"] for r in tracker.interventions] == ["stall_attempts"]
    # Within the cooldown nothing triggers, even after a restart (the state is on disk).
    again = Supervisor(quiet(stall_attempts=2, cooldown_attempts=5), tmp_path)
    assert again.state["interventions"] == 1 and again.state["last_attempt"] == 3
    assert again.check(history + [attempt(4), attempt(5), attempt(6)], [version(0, 1.0)], 6.0) is None
    assert again.check(history + [attempt(i) for i in range(4, 9)], [version(0, 1.0)], 6.0)[0] == "stall_attempts"
    records = [json.loads(line) for line in (tmp_path / "supervisor.jsonl").read_text().splitlines()]
    assert records[0]["action"] == "widen" and records[0]["reason"].startswith("no version committed")


def test_parse_directions():
    assert parse_directions('Sure:\n["a", "b", "c", "d"]', 3) == ["a", "b", "c"]
    assert parse_directions("1. split K\n   across warps\n2. larger tiles\n- fuse softmax", 5) == [
        "split K across warps", "larger tiles", "fuse softmax"]


def test_heuristic_run_widens_the_mutation_and_notes_the_next_version(tmp_path):
    seed = tmp_path / "seed"
    seed.mkdir()
    (seed / "kernel.py").write_text(KERNEL.replace('"B": [1, 2]', '"B": [1, 2], "C": [1, 2], "D": [1, 2]')
                                    .replace('"B": 1,', '"B": 1,\n    "C": 1,\n    "D": 1,'))
    run_dir = tmp_path / "run"
    lineage = Lineage(run_dir)
    budget = Budget(600.0, None, 6, run_dir / "state" / "budget.json")
    tracker = RecordingTracker()
    op = HeuristicOperator(mutations=1)
    seen = []

    def evaluate(program_dir):
        seen.append(op.mutations)
        result = fake_evaluate(program_dir)
        if 2 <= len(seen) <= 3:  # the two attempts after the seed score worse: a stall
            result["score"] = 0.5 if result["correct"] else 0.0
        return result

    harness = Harness(lineage=lineage, evaluate=evaluate, tracker=tracker, budget=budget, noise_margin=0.0,
                      operator_name=op.name)
    sup = Supervisor(quiet(stall_attempts=2, widen_factor=3, widen_steps=2, cooldown_attempts=100), run_dir,
                     tracker=tracker)
    harness.take_note = sup.take_note
    evo = Evolution(lineage=lineage, population=SingleLineage(), operator=op, harness=harness, budget=budget,
                    run_dir=run_dir, seed_dir=seed, supervisor=sup)
    evo.run()
    assert seen[:5] == [1, 1, 1, 3, 3] and seen[5] == 1  # widened for two steps after the stall, then back
    record = json.loads((run_dir / "supervisor.jsonl").read_text())
    assert record["trigger"] == "stall_attempts" and record["action"] == "widen" and record["mutations"] == 3
    committed = [v for v in lineage.versions("main") if v.number > 0]
    assert committed and "Supervisor intervention #1 (stall_attempts" in committed[0].notes
    assert json.loads((run_dir / "state" / "supervisor.json").read_text())["pending_note"] == ""
    lineage.close()


def test_build_supervisor_from_the_config(tmp_path, monkeypatch):
    from hydra import compose, initialize_config_dir

    from avo import PROJECT_ROOT
    from avo.config import register
    from avo.run import build_supervisor
    from avo.tracking import NullTracker

    register()
    with initialize_config_dir(config_dir=str(PROJECT_ROOT / "conf"), version_base="1.3"):
        heuristic = build_supervisor(compose("config", overrides=["agent=heuristic"]), tmp_path, NullTracker(), None)
        assert heuristic is not None and heuristic.client is None and heuristic.s.stall_attempts == 30
        assert build_supervisor(compose("config", overrides=["supervisor=none"]), tmp_path, NullTracker(), None) is None
        agent = build_supervisor(compose("config", overrides=["agent=avo", "supervisor.model.model=big-model"]),
                                 tmp_path, NullTracker(), None)
        assert agent.client.settings.model == "big-model"
        assert agent.client.settings.base_url == "http://127.0.0.1:8000/v1"  # the agent's
        separate = build_supervisor(compose("config", overrides=[
            "agent=heuristic", "supervisor.model.model=m", "supervisor.model.base_url=http://127.0.0.1:9/v1",
            "supervisor.model.prices.input=1.0"]), tmp_path, NullTracker(), None)
        assert separate.client.settings.model == "m" and separate.client.settings.prices.input == 1.0

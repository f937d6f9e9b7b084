import logging
from types import SimpleNamespace

import pytest

from avo import tracking
from avo.tracking import NullTracker, WandbTracker, resolve_mode


def make(tmp_path, **kw):
    args = dict(project="avo-test", entity=None, mode="offline", run_dir=tmp_path, name="t", group="g",
                tags=["task:mha_causal"], config={"task": {"name": "mha_causal"}})
    args.update(kw)
    return WandbTracker(**args)


def test_mode_auto_follows_api_key(monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    assert resolve_mode("auto") == "offline"
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert resolve_mode("auto") == "online"
    with pytest.raises(ValueError):
        resolve_mode("sometimes")


@pytest.mark.slow
def test_offline_run_is_written_and_resumable(tmp_path):
    t = make(tmp_path)
    assert t.run is not None and t.run_id
    version = SimpleNamespace(number=1, score=2.5, branch="main", sha="a" * 40, message="v1", result={
        "configs": [{"label": "B1_S64", "tflops": 2.5}]})
    t.log_attempt({"n": 1, "outcome": "accepted", "result": {"score": 2.5, "correct": True,
                                                             "configs": [{"label": "B1_S64", "tflops": 2.5}]}}, 2.5)
    t.log_version(version, 1)
    best = tmp_path / "best"
    best.mkdir()
    (best / "kernel.py").write_text("x = 1\n")
    t.log_summary({"best_score": 2.5}, [version], best)
    t.finish()
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and t.run_id in runs[0].name
    assert list(runs[0].glob("*.wandb"))
    again = make(tmp_path, run_id=t.run_id)
    assert again.run_id == t.run_id
    again.finish()


def test_wandb_failure_is_a_warning_not_fatal(tmp_path, monkeypatch, caplog):
    import wandb

    def boom(**kw):
        raise RuntimeError("network unreachable")

    monkeypatch.setattr(wandb, "init", boom)
    with caplog.at_level(logging.WARNING, logger=tracking.__name__):
        t = make(tmp_path)
    assert t.run is None and "network unreachable" in caplog.text
    t.log_attempt({"n": 1}, 0.0)  # quiet no-ops from here on
    t.log_summary({}, [], None)
    t.finish()


def test_log_failure_after_start_disables_tracker(tmp_path, caplog):
    t = make(tmp_path, mode="disabled")

    class Broken:
        def log(self, data):
            raise OSError("disk full")

    t.run = Broken()
    with caplog.at_level(logging.WARNING, logger=tracking.__name__):
        t.log_attempt({"n": 1, "result": {}}, 0.0)
    assert t.run is None and "disk full" in caplog.text


def test_null_tracker_is_silent():
    t = NullTracker()
    t.log_attempt({}, 0.0)
    t.finish()
    assert t.run_id is None


def test_intervention_is_logged_at_its_attempt(tmp_path):
    t = make(tmp_path, mode="disabled")
    logged = []
    t.run = SimpleNamespace(log=logged.append)
    t.log_intervention({"intervention": 2, "trigger": "plateau", "attempt": 17, "action": "directions",
                        "directions": ["a", "b"]})
    assert logged == [{"attempt": 17, "supervisor/intervention": 2, "supervisor/trigger": "plateau",
                       "supervisor/action": "directions", "supervisor/directions": "a\nb"}]
    NullTracker().log_intervention({})

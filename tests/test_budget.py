import time

from avo.budget import Budget, format_duration


def test_elapsed_time_continues_across_restarts(tmp_path):
    path = tmp_path / "state" / "budget.json"
    first = Budget(100.0, None, None, path)
    time.sleep(0.05)
    first.save()
    second = Budget(100.0, None, None, path)
    assert second.elapsed() >= 0.05
    assert abs(second.elapsed() - first.elapsed()) < 0.05
    assert second.remaining() <= 100.0 - 0.05


def test_exhausted_reasons(tmp_path):
    b = Budget(1000.0, 3, 10, tmp_path / "b.json")
    assert b.exhausted(versions=2, attempts=9) is None
    assert "max_versions" in b.exhausted(versions=3, attempts=0)
    assert "max_attempts" in b.exhausted(versions=0, attempts=10)
    assert "time budget" in Budget(0.0, None, None, tmp_path / "c.json").exhausted(0, 0)


def test_corrupt_state_starts_from_zero(tmp_path):
    path = tmp_path / "b.json"
    path.write_text("{not json")
    assert Budget(10.0, None, None, path).elapsed() < 1.0


def test_format_duration():
    assert format_duration(7 * 86400 + 3600 + 60) == "7d01h01m"
    assert format_duration(125) == "2m05s"


def test_tokens_and_dollars_are_limits_that_survive_restarts(tmp_path):
    path = tmp_path / "state" / "budget.json"
    b = Budget(1000.0, None, None, path, max_tokens=1000, max_usd=2.0)
    b.spend(600, 1.5)
    assert b.exhausted(0, 0) is None
    b.save()
    again = Budget(1000.0, None, None, path, max_tokens=1000, max_usd=2.0)
    assert (again.tokens, again.usd) == (600, 1.5)
    again.spend(500, 0.1)
    assert "budget.max_tokens=1000" in again.exhausted(0, 0)
    rich = Budget(1000.0, None, None, tmp_path / "r.json", max_usd=2.0)
    rich.spend(10, 2.5)
    assert "budget.max_usd=2.0" in rich.over_spend()

import pytest

from avo.evaluate import result as R
from avo.task import Grid, GridPoint, Task, grid_shapes


def test_trim_keeps_head_and_tail():
    text = "A" * 50 + "B" * 100 + "C" * 50
    out = R.trim(text, 100)
    assert out.startswith("A" * 50) and out.endswith("C" * 50)
    assert "... [100 chars elided] ..." in out
    assert R.trim("short", 100) == "short"
    assert R.trim(None, 10) is None


def test_failed_result_has_all_zeros():
    task, grid = Task(), Grid(name="g", configs=[GridPoint(1, 64), GridPoint(2, 32)])
    res = R.new_result(task, grid, grid_shapes(task, grid))
    for c in res["configs"]:
        c["tflops"] = 123.0
    R.fail(res, "correctness_grid", "x" * 50, limit=20)
    assert res["score"] == 0.0 and all(c["tflops"] == 0.0 for c in res["configs"])
    assert res["stage"] == "correctness_grid" and res["correct"] is False
    assert "chars elided" in res["error"]
    assert [c["label"] for c in res["configs"]] == ["B1_S64_H16/16_D128", "B2_S32_H16/16_D128"]
    assert set(res) >= {"stage", "correct", "error", "configs", "score", "device", "baselines", "flags", "log",
                        "elapsed_s", "grid", "task"}


def test_correct_result_scores_geometric_mean():
    task, grid = Task(), Grid(name="g", configs=[GridPoint(1, 64), GridPoint(2, 32)])
    res = R.new_result(task, grid, grid_shapes(task, grid))
    res["correct"] = True
    res["configs"][0]["tflops"], res["configs"][1]["tflops"] = 100.0, 400.0
    assert R.finalize(res)["score"] == pytest.approx(200.0)

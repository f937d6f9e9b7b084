"""agent=single_shot: parsing and applying edits, sampling, one step in process, and a CPU run through run.py."""
import json
import random
from dataclasses import dataclass

import pytest
from e2e import FAST, attempts, git, run_py
from fake_llm import text_reply, usage

from avo.config import PricesConfig
from avo.operators.single_shot import EditError, apply_edits, parse_edits, weighted_sample

SR = '''Fewer warps.

kernel.py
```python
<<<<<<< SEARCH
    "A": 1,
=======
    "A": 2,
>>>>>>> REPLACE
```
'''


def test_parse_and_apply_search_replace_and_whole_files(tmp_path):
    (tmp_path / "kernel.py").write_text('CONFIG = {\n    "A": 1,   \n    "B": 1,\n}\n')
    edits = parse_edits(SR + '\n```python file=helper.py\nX = 1\n```\n')
    assert edits == [("kernel.py", '    "A": 1,', '    "A": 2,'), ("helper.py", None, "X = 1\n")]
    # The trailing spaces after "A": 1, are tolerated line by line.
    assert apply_edits(tmp_path, edits) == ["kernel.py", "helper.py"]
    assert '"A": 2,' in (tmp_path / "kernel.py").read_text() and (tmp_path / "helper.py").read_text() == "X = 1\n"
    with pytest.raises(EditError, match="not found"):
        apply_edits(tmp_path, [("kernel.py", "nothing like this", "x")])
    with pytest.raises(EditError, match="outside"):
        apply_edits(tmp_path, [("../evil.py", None, "x")])
    assert parse_edits("no edits here") == []


def test_weighted_sample_prefers_high_scores():
    @dataclass
    class V:
        score: float
        sha: str

    versions = [V(1.0, "a"), V(10.0, "b"), V(100.0, "c")]
    picks = [weighted_sample(versions, 1, random.Random(i))[0].sha for i in range(300)]
    assert picks.count("c") > picks.count("b") > picks.count("a")
    assert sorted(v.sha for v in weighted_sample(versions, 5, random.Random(0))) == ["a", "b", "c"]


def test_invalid_reply_is_recorded_then_a_valid_one_commits(make_run, llm_server):
    llm_server.add(text_reply("I would make it faster somehow."),
                   text_reply(SR, use=usage(2000, 300, cached=1000)))
    run = make_run(operator="single_shot", prices=PricesConfig(input=1.0, cached=0.5, output=4.0))
    assert run.evolution.run() == 2.0
    assert run.outcomes() == ["seed", "invalid", "accepted"]
    invalid, accepted = run.attempts()[1:]
    assert invalid["stage"] == "apply" and "no SEARCH/REPLACE block" in invalid["error"]
    assert accepted["llm"]["cached"] == 1000 and accepted["cost_usd"] == pytest.approx((1000 + 500 + 1200) / 1e6)
    assert run.lineage.best().message.startswith("single_shot: Fewer warps.")
    prompt = llm_server.requests[0]["messages"][0]["content"]
    assert "main/v0" in prompt and '"A": 1,' in prompt and "SEARCH" in prompt
    assert run.budget.tokens == 120 + 2300


@pytest.mark.slow
def test_single_shot_cpu_run_commits(tmp_path, llm_server):
    llm_server.add(text_reply("Four warps.\n\nkernel.py\n<<<<<<< SEARCH\n    \"num_warps\": 8,\n=======\n"
                              "    \"num_warps\": 4,\n>>>>>>> REPLACE\n"))
    run_dir = tmp_path / "run"
    proc = run_py(*FAST, "agent=single_shot", f"agent.base_url={llm_server.url}", "agent.model=fake-model",
                  f"hydra.run.dir={run_dir}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [a["outcome"] for a in attempts(run_dir)] == ["seed", "accepted"]
    assert '"num_warps": 4,' in git(run_dir, "show", "main/v1:kernel.py")
    assert json.loads((run_dir / "summary.json").read_text())["agent"] == "single_shot"

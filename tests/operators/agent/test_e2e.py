"""agent=avo end to end through run.py on the CPU: the real evaluator (smoke grid, Triton seed under the
interpreter) and the scripted loopback model server. `evolve.noise_margin=0.5` (tests/e2e.py) makes the
commit deterministic despite noisy CPU timings.
"""
import json

import pytest
from e2e import FAST, attempts, git, run_py
from fake_llm import action, call, text_reply, tool_reply

BREAK = dict(path="kernel.py", old_text="acc = acc / l_i[:, None]", new_text="acc = acc / (2.0 * l_i[:, None])")
FIX = dict(path="kernel.py", old_text="acc = acc / (2.0 * l_i[:, None])", new_text="acc = acc / l_i[:, None]")
WARPS = dict(path="kernel.py", old_text='"num_warps": 8,', new_text='"num_warps": 4,')


def check_committed(run_dir, proc):
    assert proc.returncode == 0, proc.stderr[-4000:]
    outcomes = [a["outcome"] for a in attempts(run_dir)]
    assert outcomes[0] == "seed" and outcomes[-1] == "accepted" and "rejected" in outcomes
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["versions"] == 2 and summary["agent"] == "avo"  # v1 committed (not necessarily faster: noise)
    assert "main/v1" in git(run_dir, "tag").split()
    kernel = git(run_dir, "show", "main/v1:kernel.py")
    assert '"num_warps": 4,' in kernel and "acc = acc / l_i[:, None]" in kernel
    return attempts(run_dir)


@pytest.mark.slow
def test_avo_run_reads_edits_evaluates_is_rejected_fixes_and_commits(tmp_path, llm_server):
    llm_server.add(
        tool_reply(call("read_file", path="kernel.py", start_line=100, end_line=130)),
        tool_reply(call("edit_file", **BREAK)),
        tool_reply(call("evaluate", grid="quick")),
        tool_reply(call("submit", message="normalise by 2l (a deliberate bug)")),
        tool_reply(call("edit_file", **FIX), call("edit_file", **WARPS)),
        tool_reply(call("submit", message="num_warps=4", notes="fewer warps")),
    )
    run_dir = tmp_path / "run"
    proc = run_py(*FAST, "agent=avo", f"agent.base_url={llm_server.url}", "agent.model=fake-model",
                  "agent.retry_backoff_s=0", f"hydra.run.dir={run_dir}")
    records = check_committed(run_dir, proc)
    assert [a["outcome"] for a in records] == ["seed", "evaluated", "rejected", "accepted"]
    evaluated, rejected = records[1], records[2]
    assert evaluated["result"]["grid"] == "smoke-quick" and not evaluated["correct"]
    assert rejected["stage"].startswith("correctness") and rejected["llm"]["calls"] == 4
    # The model was shown the evaluator's verdict on the broken kernel.
    assert "FAILED at stage 'correctness" in llm_server.requests[3]["messages"][-1]["content"]
    assert "REJECTED" in llm_server.requests[4]["messages"][-1]["content"]
    traj = (run_dir / "agent" / "trajectory.jsonl").read_text().splitlines()
    assert {json.loads(line)["type"] for line in traj} >= {"step_start", "request", "response", "tool_call",
                                                             "tool_result", "step_end"}
    assert (run_dir / "agent" / "memory.json").is_file()


@pytest.mark.slow
def test_avo_run_with_the_text_protocol(tmp_path, llm_server):
    llm_server.add(
        text_reply("Break it first.\n" + action("edit_file", **BREAK)),
        text_reply(action("submit", message="deliberate bug")),
        text_reply(action("edit_file", **FIX)),
        text_reply(action("edit_file", **WARPS)),
        text_reply(action("submit", message="num_warps=4")),
    )
    run_dir = tmp_path / "run"
    proc = run_py(*FAST, "agent=avo_ollama", f"agent.base_url={llm_server.url}", "agent.model=fake-model",
                  "agent.retry_backoff_s=0", f"hydra.run.dir={run_dir}")
    records = check_committed(run_dir, proc)
    assert [a["outcome"] for a in records] == ["seed", "rejected", "accepted"]
    assert "tools" not in llm_server.requests[0] and llm_server.requests[0]["max_tokens"] == 4096


def test_missing_api_key_is_one_clear_message(tmp_path):
    proc = run_py(*FAST, "agent=avo_openai", f"hydra.run.dir={tmp_path / 'run'}", timeout=120)
    assert proc.returncode == 2 and "OPENAI_API_KEY is not set" in proc.stderr and "Traceback" not in proc.stderr


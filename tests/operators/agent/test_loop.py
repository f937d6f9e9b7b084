"""agent=avo in process: the loop, its tools, memory, trajectory, accounting and every robustness fault.

The evaluator is the fake of conftest.py (score = A * B, A == 3 incorrect), the model the scripted
loopback server of tests/fake_llm.py.
"""
import json

import pytest
from fake_llm import DROP, action, call, call_raw, empty_choices, error, text_reply, tool_reply, usage

from avo.config import PricesConfig
from avo.errors import UserError

EDIT_A3 = dict(path="kernel.py", old_text='"A": 1,', new_text='"A": 3,')
FIX_A4 = dict(path="kernel.py", old_text='"A": 3,', new_text='"A": 4,')


def roles(body):
    return [m["role"] for m in body["messages"]]


def test_native_step_reads_edits_evaluates_is_rejected_fixes_and_commits(make_run, llm_server):
    llm_server.add(
        tool_reply(call("read_file", path="kernel.py"), use=usage(1000, 50, cached=800)),
        tool_reply(call("edit_file", **EDIT_A3)),
        tool_reply(call("evaluate", grid="quick")),
        tool_reply(call("submit", message="A=3", notes="try A=3")),
        tool_reply(call("note", text="A=3 is incorrect"), call("edit_file", **FIX_A4)),
        tool_reply(call("submit", message="A=4: larger A", notes="A=4 should be 4x")),
    )
    run = make_run(prices=PricesConfig(input=1.0, cached=0.1, output=10.0))
    best = run.evolution.run()
    assert best == 4.0
    assert run.outcomes() == ["seed", "evaluated", "rejected", "accepted"]
    evaluated, rejected, accepted = run.attempts()[1:]
    assert evaluated["grid"] == "quick" and evaluated["result"]["grid"] == "smoke-quick"
    # Accounting: tokens and cost of the step so far in every attempt record.
    assert accepted["llm"]["calls"] == 6 and accepted["tokens"] == accepted["llm"]["total"] > 0
    # 1 call of 200 new + 800 cached input and 50 output tokens, then 5 of 100 input and 20 output.
    assert accepted["cost_usd"] == pytest.approx((200 * 1.0 + 800 * 0.1 + 50 * 10.0 + 5 * (100 * 1.0 + 20 * 10.0)) / 1e6)
    assert accepted["llm"]["cached"] == 800 and evaluated["llm"]["calls"] == 3
    version = run.lineage.best("main")
    assert version.number == 1 and "A=4" in version.message and "A=3 is incorrect" in version.notes
    assert run.budget.tokens == accepted["llm"]["total"] and run.budget.usd == pytest.approx(accepted["llm"]["cost_usd"])
    # What the model saw: the file, the failed evaluation, the rejection with its reason, the acceptance.
    req = llm_server.requests
    assert req[0]["messages"][0]["role"] == "system" and "mha_causal" in req[0]["messages"][0]["content"]
    assert "Step 1" in req[0]["messages"][1]["content"]
    assert '"A": 1' in req[1]["messages"][-1]["content"]
    assert "FAILED at stage 'correctness_grid'" in req[3]["messages"][-1]["content"]
    assert "REJECTED" in req[4]["messages"][-1]["content"]
    # Assistant turns carrying tool calls are sent back with a string content.
    assistants = [m for m in req[5]["messages"] if m["role"] == "assistant"]
    assert assistants and all(isinstance(m["content"], str) for m in assistants)
    assert [t["function"]["name"] for t in req[0]["tools"]][:3] == ["list_files", "read_file", "write_file"]
    # Memory and trajectory on disk.
    memory = json.loads((run.run_dir / "agent" / "memory.json").read_text())
    assert memory["notes"] == ["A=3 is incorrect"] and memory["usage"]["calls"] == 6
    assert "ACCEPTED" in memory["messages"][-1]["content"]
    events = run.trajectory()
    types = [e["type"] for e in events]
    assert types[0] == "step_start" and types[-1] == "step_end" and types.count("request") == 6
    assert {"response", "tool_call", "tool_result"} <= set(types) and all("ts" in e and "time" in e for e in events)
    assert events[-1]["committed"] == "main/v1" and events[-1]["usage"]["calls"] == 6
    # The worktree is gone once the step ended.
    assert not (run.run_dir / "workspace" / "step-1" / "program").exists()


def test_text_protocol(make_run, llm_server):
    llm_server.add(
        text_reply(action("read_file", path="kernel.py")),
        text_reply("Trying A=3.\n" + action("edit_file", **EDIT_A3)),
        text_reply(action("submit", message="A=3")),
        text_reply(action("edit_file", **FIX_A4)),
        text_reply(action("submit", message="A=4")),
    )
    run = make_run(protocol="text")
    assert run.evolution.run() == 4.0
    assert run.outcomes() == ["seed", "rejected", "accepted"]
    req = llm_server.requests
    assert "tools" not in req[0] and "```action" in req[0]["messages"][0]["content"]
    assert "- submit(message: string" in req[0]["messages"][0]["content"]
    assert req[1]["messages"][-1]["role"] == "user" and req[1]["messages"][-1]["content"].startswith("Result of read_file")
    assert all(r == "user" for r in roles(req[3])[1::2]) and all(r == "assistant" for r in roles(req[3])[2::2])


def test_protocol_faults_get_corrective_messages(make_run, llm_server):
    llm_server.add(
        tool_reply(call_raw("edit_file", '{"path": "kernel.py", "old_text": ')),  # malformed JSON
        tool_reply(call("frobnicate", x=1)),  # unknown tool
        tool_reply(call("edit_file", path="kernel.py")),  # missing arguments
        text_reply("I think A should be 4."),  # no action
        empty_choices(),  # no choices at all
        text_reply("and then", finish_reason="length"),  # cut off
        error(500, "flaky"), DROP,  # transient: retried inside the client
        tool_reply(call("edit_file", **{**EDIT_A3, "new_text": '"A": 4,'})),
        tool_reply(call("submit", message="A=4")),
    )
    run = make_run(max_consecutive_errors=10)
    assert run.evolution.run() == 4.0
    msgs = [m for m in llm_server.requests[-1]["messages"]]
    text = "\n".join(str(m.get("content")) for m in msgs)
    for expected in ("not valid JSON", "unknown tool 'frobnicate'", "missing required argument", "No tool was called",
                     "no reply (no choices)", "cut off at the output limit"):
        assert expected in text, expected
    # Every tool call got its answer, and no two user turns follow each other.
    r = roles(llm_server.requests[-1])
    assert all(not (a == b == "user") for a, b in zip(r, r[1:]))
    kinds = [e["kind"] for e in run.trajectory() if e["type"] == "protocol_error"]
    assert kinds == ["tool_call", "tool_call", "tool_call", "no_action", "empty", "length"]


def test_text_protocol_faults(make_run, llm_server):
    llm_server.add(
        text_reply(action("read_file", path="kernel.py") + action("list_files")),  # several actions
        text_reply("```action\n{not json}\n```"),
        text_reply('```action\n{"tool": "read_file", "arguments": {}}\n```'),
        text_reply(action("edit_file", **{**EDIT_A3, "new_text": '"A": 2,'})),
        text_reply(action("submit", message="A=2")),
    )
    run = make_run(protocol="text")
    assert run.evolution.run() == 2.0
    text = json.dumps(llm_server.requests[-1]["messages"])
    assert "2 action blocks; none was run" in text and "not valid JSON" in text and "missing required argument" in text


def test_a_run_of_malformed_replies_ends_the_step_not_the_run(make_run, llm_server):
    llm_server.add(*[text_reply("no idea")] * 3,
                   tool_reply(call("edit_file", **{**EDIT_A3, "new_text": '"A": 2,'})),
                   tool_reply(call("submit", message="A=2")))
    run = make_run(max_consecutive_errors=3)
    assert run.evolution.run() == 2.0
    ends = [e for e in run.trajectory() if e["type"] == "step_end"]
    assert len(ends) == 2 and "3 malformed replies in a row" in ends[0]["note"] and ends[1]["committed"] == "main/v1"


def test_model_error_after_retries_ends_the_step_and_auth_error_ends_the_run(make_run, llm_server):
    llm_server.add(tool_reply(call("list_files")), *[error(503, "down")] * 3, error(401, "invalid key"))
    run = make_run()
    with pytest.raises(UserError, match="refused"):
        run.evolution.run()
    ends = [e for e in run.trajectory() if e["type"] == "step_end"]
    assert "model error" in ends[0]["note"] and len(ends) == 2


def test_compaction_keeps_notes_and_the_run_still_commits(make_run, llm_server):
    script = [
        tool_reply(call("note", text="remember: A=3 is broken"), use=usage(prompt=5000)),
        tool_reply(call("read_file", path="kernel.py"), use=usage(prompt=5000)),
        tool_reply(call("edit_file", **{**EDIT_A3, "new_text": '"A": 2,'}), use=usage(prompt=5000)),
        tool_reply(call("submit", message="A=2"), use=usage(prompt=5000)),
    ]

    def router(body):
        if "summarising the working memory" in body["messages"][0]["content"]:
            return text_reply("SUMMARY: read kernel.py; CONFIG A=1 B=1.", use=usage(3000, 30))
        return script.pop(0)

    llm_server.add(*[router] * 12)
    run = make_run(context_window=6000, compact_at=0.8)
    assert run.evolution.run() == 2.0
    compactions = [e for e in run.trajectory() if e["type"] == "compaction"]
    assert compactions and compactions[0]["summary"].startswith("SUMMARY")
    after = [r for r in llm_server.requests if "Memory (summarised)" in json.dumps(r["messages"])]
    assert after and "remember: A=3 is broken" in after[0]["messages"][1]["content"]
    assert "Step 1" in after[0]["messages"][1]["content"] and len(after[0]["messages"]) == 2
    memory = json.loads((run.run_dir / "agent" / "memory.json").read_text())
    assert memory["compactions"] == len(compactions)
    assert run.outcomes()[-1] == "accepted"


def test_context_overflow_from_the_server_triggers_compaction(make_run, llm_server):
    llm_server.add(tool_reply(call("list_files")), error(400, "maximum context length is 4096 tokens"),
                   text_reply("SUMMARY"), tool_reply(call("edit_file", **{**EDIT_A3, "new_text": '"A": 2,'})),
                   tool_reply(call("submit", message="A=2")))
    run = make_run()
    assert run.evolution.run() == 2.0
    assert [e for e in run.trajectory() if e["type"] == "compaction"]


def test_restart_restores_the_conversation(make_run, llm_server, tmp_path):
    llm_server.add(tool_reply(call("note", text="first-run insight")),
                   tool_reply(call("edit_file", **{**EDIT_A3, "new_text": '"A": 2,'})),
                   tool_reply(call("submit", message="A=2")))
    first = make_run(max_versions=1)
    assert first.evolution.run() == 2.0
    n_first = len(llm_server.requests)
    # A new process on the same run directory: the conversation continues where it stopped.
    llm_server.add(tool_reply(call("edit_file", path="kernel.py", old_text='"A": 2,', new_text='"A": 4,')),
                   tool_reply(call("submit", message="A=4")))
    second = make_run(max_versions=2)
    assert second.operator.memory.restored
    assert second.evolution.run() == 4.0
    resumed = llm_server.requests[n_first]
    text = json.dumps(resumed["messages"])
    assert "first-run insight" in text and "ACCEPTED as main/v1" in text and "# Step" in resumed["messages"][-1]["content"]
    assert resumed["messages"][0]["role"] == "system" and sum(m["role"] == "system" for m in resumed["messages"]) == 1


def test_step_limits_end_the_step(make_run, llm_server):
    llm_server.add(*[tool_reply(call("list_files"))] * 2, tool_reply(call("evaluate"), call("evaluate", grid="full")))
    run = make_run(max_versions=None, max_attempts=2, max_turns=2, max_evaluations=2)
    run.evolution.run()
    ends = [e["note"] for e in run.trajectory() if e["type"] == "step_end"]
    assert "limit of 2 turns" in ends[0] and "limit of 2 evaluations" in ends[1]
    assert run.outcomes() == ["seed", "evaluated", "evaluated"]


def test_money_budget_stops_the_run(make_run, llm_server):
    llm_server.add(*[tool_reply(call("list_files"), use=usage(1000, 0))] * 3)
    run = make_run(max_versions=None, max_usd=1.5, prices=PricesConfig(input=1000.0))  # $1 a call
    run.evolution.run()
    assert len(llm_server.requests) == 2 and run.budget.usd == pytest.approx(2.0)
    assert json.loads((run.run_dir / "state" / "budget.json").read_text())["usd"] == pytest.approx(2.0)


def test_secrets_never_reach_the_model_or_the_files(make_run, llm_server, monkeypatch):
    secret = "sk-live-SECRETSECRETSECRET123"
    monkeypatch.setenv("OPENAI_API_KEY", secret)
    monkeypatch.setenv("AVO_TEST_TOKEN", secret)
    llm_server.add(tool_reply(call("run_shell", command="env; echo $OPENAI_API_KEY"), content=f"my key is {secret}"),
                   tool_reply(call("write_file", path="../outside.py", content="x")),
                   tool_reply(call("edit_file", **{**EDIT_A3, "new_text": '"A": 2,'})),
                   tool_reply(call("submit", message="A=2")))
    run = make_run(api_key_env="OPENAI_API_KEY")
    run.evolution.run()
    assert llm_server.headers[0]["authorization"] == f"Bearer {secret}"
    shell_result = llm_server.requests[1]["messages"][-1]["content"]
    assert "exit code 0" in shell_result and secret not in shell_result
    assert "outside the workspace" in llm_server.requests[2]["messages"][-1]["content"]
    assert not (run.run_dir / "workspace" / "step-1" / "outside.py").exists()
    for path in (run.run_dir / "agent").rglob("*"):
        if path.is_file():
            assert secret not in path.read_text(), path
    assert secret not in (run.run_dir / "attempts.jsonl").read_text()


def test_shell_timeout_kills_the_process_group(make_run, llm_server):
    llm_server.add(tool_reply(call("run_shell", command="sleep 30 & sleep 30; echo never", timeout_s=1)),
                   tool_reply(call("edit_file", **{**EDIT_A3, "new_text": '"A": 2,'})),
                   tool_reply(call("submit", message="A=2")))
    run = make_run()
    run.evolution.run()
    result = llm_server.requests[1]["messages"][-1]["content"]
    assert "killed after the timeout" in result and "\nnever" not in result


def test_lineage_and_knowledge_tools(make_run, llm_server):
    class FakeKB:
        def search(self, query, k=5):
            from avo.knowledge import Passage

            return [Passage("knowledge/fa2.md", 3, 9, "Online softmax", f"rescale lazily ({query})", 1.5)]

        def read(self, path, start=1, end=None):
            if path != "knowledge/fa2.md":
                raise ValueError(f"no indexed file {path!r}")
            return "3  # Online softmax"

    make_run.knowledge["kb"] = FakeKB()
    llm_server.add(
        tool_reply(call("list_versions"), call("show_version", version="v0"),
                   call("show_version", version="best", path="kernel.py"), call("show_version", version="v9")),
        tool_reply(call("search_knowledge", query="online softmax"), call("read_knowledge", path="knowledge/fa2.md"),
                   call("read_knowledge", path="nope.md")),
        tool_reply(call("edit_file", **{**EDIT_A3, "new_text": '"A": 2,'}), call("diff_versions", a="v0", b="workspace")),
        tool_reply(call("submit", message="A=2")),
    )
    run = make_run()
    assert run.evolution.run() == 2.0
    tool_msgs = [m["content"] for m in llm_server.requests[-1]["messages"] if m["role"] == "tool"]
    assert tool_msgs[0].startswith("main/v0: 1 TFLOPS") and "files: kernel.py" in tool_msgs[1]
    assert '"A": 1' in tool_msgs[2] and "unknown version 'v9'" in tool_msgs[3]
    assert "knowledge/fa2.md:3-9 Online softmax" in tool_msgs[4] and "# Online softmax" in tool_msgs[5]
    assert "no indexed file" in tool_msgs[6]
    assert '-    "A": 1,' in tool_msgs[8] and '+    "A": 2,' in tool_msgs[8]
    assert "search_knowledge" in [t["function"]["name"] for t in llm_server.requests[0]["tools"]]


def test_unchanged_submission_is_refused(make_run, llm_server):
    llm_server.add(tool_reply(call("submit", message="nothing")),
                   tool_reply(call("edit_file", **{**EDIT_A3, "new_text": '"A": 2,'})),
                   tool_reply(call("submit", message="A=2")))
    run = make_run()
    run.evolution.run()
    assert "identical to the parent" in llm_server.requests[1]["messages"][-1]["content"]
    assert run.outcomes() == ["seed", "accepted"]

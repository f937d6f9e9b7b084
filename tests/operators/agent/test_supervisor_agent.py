"""The supervisor with a scripted model: the agent stalls, the supervisor asks the model for directions,
and they reach the agent's next prompt."""
import json

from fake_llm import call, text_reply, tool_reply

from avo.llm import LLMClient, LLMSettings
from avo.supervisor import Supervisor, SupervisorSettings

EDIT_A3 = dict(path="kernel.py", old_text='"A": 1,', new_text='"A": 3,')
EDIT_A4 = dict(path="kernel.py", old_text='"A": 1,', new_text='"A": 4,')
DIRECTIONS = ["Raise A to 4: the tile is too small", "Try B=2 with A=2", "Restructure the inner loop"]


def test_stalled_agent_gets_the_supervisors_directions_in_its_next_prompt(make_run, llm_server):
    llm_server.add(
        # Step 1: an incorrect submission, then the step ends at its turn limit: a stall.
        tool_reply(call("edit_file", **EDIT_A3)),
        tool_reply(call("submit", message="A=3")),
        # The supervisor's one call.
        text_reply(json.dumps(DIRECTIONS)),
        # Step 2: the agent follows the first direction.
        tool_reply(call("edit_file", **EDIT_A4)),
        tool_reply(call("submit", message="A=4 as the supervisor suggested")),
    )
    run = make_run(max_turns=2)
    interventions = []
    run.evolution.harness.tracker.log_intervention = interventions.append
    client = LLMClient(LLMSettings(model="fake-model", base_url=llm_server.url, retry_backoff_s=0.0, max_retries=1))
    settings = SupervisorSettings(stall_attempts=1, stall_hours=None, repeat_failures=None, plateau_versions=None)
    sup = Supervisor(settings, run.run_dir, client=client, tracker=run.evolution.harness.tracker,
                     notes=lambda: list(run.operator.memory.notes))
    run.evolution.supervisor = sup
    run.evolution.harness.take_note = sup.take_note
    assert run.evolution.run() == 4.0

    req = llm_server.requests
    assert len(req) == 5
    # The supervisor saw the trajectory: the versions and the failed attempt.
    review = req[2]["messages"]
    assert "JSON list of 3 strings" in review[0]["content"]
    assert "main/v0" in review[1]["content"] and "correctness_grid" in review[1]["content"]
    # Its directions reach the agent's next step prompt.
    opening = req[3]["messages"][-1]["content"]
    assert "Guidance from the supervisor" in opening and all(d in opening for d in DIRECTIONS)
    assert "Guidance" not in json.dumps(req[0]["messages"])
    # Logged: supervisor.jsonl, the tracker, the committed version's notes; the state persisted.
    record = json.loads((run.run_dir / "supervisor.jsonl").read_text())
    assert record["trigger"] == "stall_attempts" and record["directions"] == DIRECTIONS and record["llm"]["calls"] == 1
    assert interventions and interventions[0]["directions"] == DIRECTIONS
    assert "Supervisor intervention #1 (stall_attempts" in run.lineage.best("main").notes
    state = json.loads((run.run_dir / "state" / "supervisor.json").read_text())
    assert state["interventions"] == 1 and state["pending_note"] == ""
    assert run.budget.tokens > 0  # the supervisor's call is charged to the run


def test_supervisor_model_failure_falls_back_to_general_guidance(make_run, llm_server):
    from fake_llm import error

    llm_server.add(
        tool_reply(call("edit_file", **EDIT_A3)),
        tool_reply(call("submit", message="A=3")),
        error(400, "bad request"),  # the supervisor's call fails (rejected)
        tool_reply(call("edit_file", **EDIT_A4)),
        tool_reply(call("submit", message="A=4")),
    )
    run = make_run(max_turns=2)
    client = LLMClient(LLMSettings(model="fake-model", base_url=llm_server.url, retry_backoff_s=0.0, max_retries=0))
    sup = Supervisor(SupervisorSettings(stall_attempts=1, stall_hours=None, repeat_failures=None,
                                        plateau_versions=None), run.run_dir, client=client)
    run.evolution.supervisor = sup
    assert run.evolution.run() == 4.0
    assert len(llm_server.requests) == 5
    record = json.loads((run.run_dir / "supervisor.jsonl").read_text())
    assert record["action"] == "widen" and "bad request" in record["error"]
    assert "Move further from the parent" in llm_server.requests[-2]["messages"][-1]["content"]

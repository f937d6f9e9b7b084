"""The model server going down mid-step: waited out without burning the step's time limit."""
from fake_llm import DROP, call, tool_reply

EDIT_A2 = dict(path="kernel.py", old_text='"A": 1,', new_text='"A": 2,')


def test_outage_does_not_count_against_the_steps_minutes(make_run, llm_server):
    llm_server.add(tool_reply(call("list_files")), DROP, DROP, DROP,
                   tool_reply(call("edit_file", **EDIT_A2)), tool_reply(call("submit", message="A=2")))
    # 1.2 s for the step; the outage takes about 2 s of backoff (0.3 + 0.6 + 1.2 s, jittered).
    run = make_run(max_step_minutes=0.02)
    run.operator.client.settings.retry_backoff_s = 0.3
    assert run.evolution.run() == 2.0
    assert run.operator.client.waited_s > 1.2
    assert len(llm_server.requests) == 6  # three dropped connections beyond max_retries=2, then on

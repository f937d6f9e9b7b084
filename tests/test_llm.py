"""The model client against a real OpenAI-compatible HTTP server on loopback (tests/fake_llm.py)."""
import json
import socket

import pytest
from fake_llm import DROP, call, call_raw, empty_choices, error, text_reply, tool_reply, usage

from avo.errors import UserError
from avo.llm import (LLMClient, LLMContextOverflow, LLMError, LLMFatalError, LLMSettings, Prices, redact,
                     register_secret, scrubbed_env)


def client(server, events=None, **kw):
    settings = LLMSettings(model="fake-model", base_url=server.url if server else kw.pop("base_url"),
                           retry_backoff_s=0.0, max_retries=kw.pop("max_retries", 3), timeout_s=kw.pop("timeout_s", 10), **kw)
    return LLMClient(settings, on_event=(events.append if events is not None else None), sleep=lambda s: None)


def test_tool_calls_usage_and_cost(llm_server):
    llm_server.add(tool_reply(call("read_file", path="kernel.py"), use=usage(prompt=1000, completion=200, cached=600)))
    c = client(llm_server, prices=Prices(input=2.0, cached=0.5, output=10.0), max_output_tokens=123)
    reply = c.chat([{"role": "user", "content": "hi"}], tools=[{"type": "function", "function": {"name": "read_file"}}])
    assert reply.tool_calls[0].name == "read_file" and json.loads(reply.tool_calls[0].arguments) == {"path": "kernel.py"}
    assert (reply.usage.input, reply.usage.cached, reply.usage.output) == (400, 600, 200)
    assert reply.usage.cost_usd == pytest.approx((400 * 2.0 + 600 * 0.5 + 200 * 10.0) / 1e6)
    # The assistant turn goes back with a string content even when the server sent null.
    assert reply.assistant_message()["content"] == ""
    body = llm_server.requests[0]
    assert body["model"] == "fake-model" and body["max_completion_tokens"] == 123 and body["tools"]
    assert "temperature" not in body and "reasoning_effort" not in body


def test_max_tokens_param_and_extra_body(llm_server):
    llm_server.add(text_reply("ok"))
    c = client(llm_server, max_tokens_param="max_tokens", max_output_tokens=77, temperature=0.2,
               reasoning_effort="low", extra_body={"top_k": 20})
    assert c.chat([{"role": "user", "content": "x"}]).content == "ok"
    body = llm_server.requests[0]
    assert body["max_tokens"] == 77 and "max_completion_tokens" not in body
    assert body["temperature"] == 0.2 and body["reasoning_effort"] == "low" and body["top_k"] == 20


@pytest.mark.parametrize("fault", [error(429, "slow down", headers={"Retry-After": "0"}), error(500, "boom"),
                                   error(503, "overloaded"), DROP])
def test_transient_errors_are_retried(llm_server, fault):
    llm_server.add(fault, fault, text_reply("finally"))
    events = []
    reply = client(llm_server, events).chat([{"role": "user", "content": "x"}])
    assert reply.content == "finally" and len(llm_server.requests) == 3
    assert sum(e["type"] == "llm_error" for e in events) == 2


def test_transient_errors_past_the_retries_end_the_step_not_the_run(llm_server):
    llm_server.add(text_reply("first"), *[error(500, "down")] * 3)
    c = client(llm_server, max_retries=2)
    c.chat([{"role": "user", "content": "x"}])
    with pytest.raises(LLMError) as info:
        c.chat([{"role": "user", "content": "x"}])
    assert not isinstance(info.value, UserError) and "gave up after 3 tries" in str(info.value)


def test_auth_error_ends_the_run_naming_the_variable(llm_server, monkeypatch):
    monkeypatch.setenv("MY_TEST_KEY", "sk-test-abcdefghijklmnop")
    llm_server.add(error(401, "Incorrect API key provided: sk-test-abcdefghijklmnop"))
    with pytest.raises(LLMFatalError) as info:
        client(llm_server, api_key_env="MY_TEST_KEY").chat([{"role": "user", "content": "x"}])
    assert "$MY_TEST_KEY" in str(info.value) and "sk-test-abc" not in str(info.value)
    assert len(llm_server.requests) == 1  # not retried
    assert llm_server.headers[0]["authorization"] == "Bearer sk-test-abcdefghijklmnop"


def test_model_not_found_ends_the_run(llm_server):
    llm_server.add(error(404, "The model `nope` does not exist"))
    with pytest.raises(LLMFatalError, match="agent.model"):
        client(llm_server).chat([{"role": "user", "content": "x"}])


def test_missing_key_names_the_variable(monkeypatch):
    monkeypatch.delenv("AVO_TEST_MISSING_KEY", raising=False)
    with pytest.raises(UserError, match="AVO_TEST_MISSING_KEY is not set"):
        client(None, base_url="http://127.0.0.1:9/v1", api_key_env="AVO_TEST_MISSING_KEY")


def test_unreachable_endpoint_names_base_url_and_how_to_start_a_server():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/v1"
    with pytest.raises(LLMFatalError) as info:
        client(None, base_url=url, max_retries=1).chat([{"role": "user", "content": "x"}])
    assert url in str(info.value) and "vllm serve" in str(info.value)


def test_context_overflow_and_bad_requests(llm_server):
    llm_server.add(text_reply("ok"), error(400, "This model's maximum context length is 8192 tokens"),
                   error(400, "unsupported parameter"))
    c = client(llm_server)
    c.chat([{"role": "user", "content": "x"}])
    with pytest.raises(LLMContextOverflow):
        c.chat([{"role": "user", "content": "x"}])
    with pytest.raises(LLMError) as info:
        c.chat([{"role": "user", "content": "x"}])
    assert not isinstance(info.value, UserError)


def test_first_request_rejected_is_a_config_error(llm_server):
    llm_server.add(error(400, "reasoning_effort is not supported"))
    with pytest.raises(LLMFatalError, match="reasoning_effort"):
        client(llm_server).chat([{"role": "user", "content": "x"}])


def test_empty_choices_length_and_malformed_arguments_are_returned_for_the_caller(llm_server):
    llm_server.add(empty_choices(), text_reply("cut", finish_reason="length"),
                   tool_reply(call_raw("edit_file", '{"path": "kernel.py", "old_text": ')))
    c = client(llm_server)
    assert c.chat([{"role": "user", "content": "x"}]).empty
    assert c.chat([{"role": "user", "content": "x"}]).finish_reason == "length"
    assert c.chat([{"role": "user", "content": "x"}]).tool_calls[0].arguments.endswith('"old_text": ')


def test_redaction_and_scrubbed_environment(monkeypatch):
    register_secret("my-very-secret-value")
    text = "key sk-proj-ABCDEFGHIJKLMNOP and Authorization: Bearer abcdefghijklmnop, also my-very-secret-value"
    out = redact({"a": [text]})["a"][0]
    assert "sk-proj" not in out and "abcdefghijklmnop" not in out and "my-very-secret-value" not in out
    monkeypatch.setenv("OPENAI_API_KEY", "x" * 20)
    monkeypatch.setenv("HF_TOKEN", "y" * 20)
    monkeypatch.setenv("AVO_HARMLESS", "1")
    env = scrubbed_env()
    assert "OPENAI_API_KEY" not in env and "HF_TOKEN" not in env and env["AVO_HARMLESS"] == "1"
    assert "OPENAI_API_KEY" in scrubbed_env(keep=("OPENAI_API_KEY",))


def test_the_config_sent_to_wandb_is_redacted():
    from avo.run import redact_config

    cfg = {"agent": {"api_key_env": "OPENAI_API_KEY", "extra_body": {"auth": "Bearer abcdefghijklmnopqrstuvwxyz"}},
           "note": ["sk-abcdefghijklmnopqrstuv"]}
    out = redact_config(cfg)
    assert out["agent"]["api_key_env"] == "OPENAI_API_KEY"
    assert "abcdefghij" not in json.dumps(out)

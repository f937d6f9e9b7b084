"""A real OpenAI-compatible HTTP server on 127.0.0.1 with scripted replies, for tests (no network).

    with FakeLLM([tool_reply(call("read_file", path="kernel.py")), text_reply("done")]) as llm:
        ... agent.base_url=llm.url ...
        llm.requests  # every request body (parsed JSON), in order

Each POST /v1/chat/completions takes the next item of the script:
- a dict: sent as the JSON response (200);
- `error(status, message, headers)`: an error status with an OpenAI-style error body;
- `DROP`: the connection is closed without a response (a dropped connection);
- a callable: called with the request body, returns one of the above (to answer according to the request).
When the script is exhausted the server answers 401 "script exhausted", which ends a run at once.
The `llm_server` fixture (imported into tests/conftest.py) gives a fresh server per test.
"""
from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Optional, Union

import pytest

DROP = object()


@dataclass
class Error:
    status: int
    message: str
    headers: Optional[dict] = None
    code: Optional[str] = None


def error(status: int, message: str = "error", headers: Optional[dict] = None, code: Optional[str] = None) -> Error:
    return Error(status, message, headers, code)


def usage(prompt: int = 100, completion: int = 20, cached: int = 0) -> dict:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": cached}}


_ids = iter(range(1, 10**9))


def call(name: str, **arguments: Any) -> dict:
    """A tool call with JSON arguments."""
    return {"id": f"call_{next(_ids)}", "type": "function", "function": {"name": name, "arguments": json.dumps(arguments)}}


def call_raw(name: str, arguments: str) -> dict:
    """A tool call whose arguments are sent verbatim (e.g. malformed JSON)."""
    return {"id": f"call_{next(_ids)}", "type": "function", "function": {"name": name, "arguments": arguments}}


def completion(message: dict, finish_reason: str = "stop", use: Optional[dict] = None) -> dict:
    return {"id": f"chatcmpl-{next(_ids)}", "object": "chat.completion", "created": 0, "model": "fake-model",
            "choices": [{"index": 0, "message": message, "finish_reason": finish_reason}],
            "usage": use if use is not None else usage()}


def tool_reply(*calls: dict, content: Optional[str] = None, finish_reason: str = "tool_calls",
               use: Optional[dict] = None) -> dict:
    return completion({"role": "assistant", "content": content, "tool_calls": list(calls)}, finish_reason, use)


def text_reply(content: str, finish_reason: str = "stop", use: Optional[dict] = None) -> dict:
    return completion({"role": "assistant", "content": content}, finish_reason, use)


def action(tool: str, **arguments: Any) -> str:
    """A text-protocol reply: one fenced action block."""
    return f"I will use {tool}.\n```action\n{json.dumps({'tool': tool, 'arguments': arguments}, indent=1)}\n```\n"


def empty_choices() -> dict:
    return {"id": "chatcmpl-empty", "object": "chat.completion", "created": 0, "model": "fake-model", "choices": [],
            "usage": usage(10, 0)}


Item = Union[dict, Error, object, Callable[[dict], Any]]


class FakeLLM:
    def __init__(self, script: Optional[list[Item]] = None) -> None:
        self.script: list[Item] = list(script or [])
        self.requests: list[dict] = []
        self.headers: list[dict] = []
        self._lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def _send(self, status: int, body: dict, headers: Optional[dict] = None) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, str(v))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):  # noqa: N802
                if self.path.rstrip("/").endswith("/models"):
                    self._send(200, {"object": "list", "data": [{"id": "fake-model", "object": "model"}]})
                else:
                    self._send(404, {"error": {"message": f"no route {self.path}"}})

            def do_POST(self):  # noqa: N802
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                if not self.path.rstrip("/").endswith("/chat/completions"):
                    self._send(404, {"error": {"message": f"no route {self.path}"}})
                    return
                body = json.loads(raw or b"{}")
                with owner._lock:
                    owner.requests.append(body)
                    owner.headers.append({k.lower(): v for k, v in self.headers.items()})
                    item = owner.script.pop(0) if owner.script else error(401, "fake server: script exhausted")
                if callable(item) and not isinstance(item, (dict, Error)):
                    item = item(body)
                if item is DROP:
                    self.close_connection = True
                    try:
                        self.connection.shutdown(2)
                    except OSError:
                        pass
                    return
                if isinstance(item, Error):
                    self._send(item.status, {"error": {"message": item.message, "type": "error", "code": item.code}},
                               item.headers)
                    return
                self._send(200, item)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def add(self, *items: Item) -> "FakeLLM":
        with self._lock:
            self.script.extend(items)
        return self

    def start(self) -> "FakeLLM":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> "FakeLLM":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


@pytest.fixture
def llm_server():
    with FakeLLM() as server:
        yield server

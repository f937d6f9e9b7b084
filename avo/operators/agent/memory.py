"""The agent's memory (its conversation, persisted) and its trajectory (an append-only log of everything).

Files under `<run_dir>/agent/`:

- `memory.json`: the conversation as it is sent to the model (OpenAI chat messages), the agent's notes, the
  usage totals and the number of compactions. Rewritten atomically after every turn, so a run restarted
  on the same directory continues the conversation where the last complete turn left it.
- `trajectory.jsonl`: one JSON object per event, appended as it happens, with `ts` (seconds since the
  epoch), `time` (ISO 8601, UTC), `step` and `turn`: `step_start`, `request` (the messages added since the
  previous request, the number of messages in all, the sampling parameters), `response` (content,
  reasoning, tool calls, finish reason, usage with cost), `llm_error` (with retries), `tool_call`,
  `tool_result`, `protocol_error`, `compaction` (the summary and the new conversation), `step_end`
  (verdict and the step's usage). Secrets are redacted before anything is written.
"""
from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

from avo.budget import write_json_atomic
from avo.llm import Usage, redact


class Trajectory:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.step: Optional[int] = None
        self.turn = 0

    def event(self, type: str, **data) -> None:
        now = time.time()
        record = {"ts": round(now, 3), "time": datetime.fromtimestamp(now, timezone.utc).isoformat(timespec="milliseconds"),
                  "step": self.step, "turn": self.turn, "type": type, **data}
        line = json.dumps(redact(record), default=str)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(line + "\n")

    def __call__(self, event: dict) -> None:  # the LLM client's on_event
        event = dict(event)
        self.event(event.pop("type", "llm"), **event)


class Memory:
    """The conversation: messages[0] is the system prompt (rebuilt each step), then user/assistant/tool turns."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.messages: list[dict] = []
        self.notes: list[str] = []
        self.usage = Usage()
        self.compactions = 0
        self.steps = 0
        self.restored = False
        # Tokens of the conversation up to `anchor_len` messages, as the server counted them last time.
        self.anchor_len = 0
        self.anchor_tokens = 0
        self.sent = 0  # messages already logged in a `request` event of the trajectory
        self.load()

    # ------------------------------------------------------------------ persistence

    def load(self) -> None:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return
        self.messages = [m for m in data.get("messages", []) if isinstance(m, dict) and m.get("role")]
        self.notes = [str(n) for n in data.get("notes", [])]
        self.usage = Usage.from_dict(data.get("usage"))
        self.compactions = int(data.get("compactions", 0))
        self.steps = int(data.get("steps", 0))
        self.restored = bool(self.messages)
        self._close_dangling_tool_calls()

    def save(self) -> None:
        write_json_atomic(self.path, redact({"messages": self.messages, "notes": self.notes,
                                             "usage": self.usage.to_dict(), "compactions": self.compactions,
                                             "steps": self.steps, "saved": time.time()}))

    def _close_dangling_tool_calls(self) -> None:
        """Every tool call of an assistant turn must be answered before the next user turn (servers insist)."""
        fixed: list[dict] = []
        pending: list[str] = []
        for m in self.messages:
            if m["role"] != "tool" and pending:
                fixed += [{"role": "tool", "tool_call_id": i, "content": "(interrupted: the run was stopped)"} for i in pending]
                pending = []
            fixed.append(m)
            if m["role"] == "assistant":
                pending = [c.get("id") for c in m.get("tool_calls") or []]
            elif m["role"] == "tool" and m.get("tool_call_id") in pending:
                pending.remove(m.get("tool_call_id"))
        fixed += [{"role": "tool", "tool_call_id": i, "content": "(interrupted: the run was stopped)"} for i in pending]
        self.messages = fixed

    # ------------------------------------------------------------------ messages

    def set_system(self, text: str) -> None:
        if self.messages and self.messages[0]["role"] == "system":
            self.messages[0] = {"role": "system", "content": text}
        else:
            self.messages.insert(0, {"role": "system", "content": text})

    def add(self, message: dict) -> None:
        self.messages.append(message)

    def add_user(self, text: str) -> None:
        """A user turn; merged into the previous one if that is a user turn (strict chat templates alternate)."""
        last = self.messages[-1] if self.messages else None
        if last is not None and last["role"] == "user" and isinstance(last.get("content"), str):
            last["content"] = f"{last['content']}\n\n{text}"
            self.sent = min(self.sent, len(self.messages) - 1)  # the trajectory logs the merged turn again
        else:
            self.messages.append({"role": "user", "content": text})

    def last_user_text(self) -> str:
        for m in reversed(self.messages):
            if m["role"] == "user":
                return str(m.get("content") or "")
        return ""

    # ------------------------------------------------------------------ size

    @staticmethod
    def chars(messages: list[dict]) -> int:
        return sum(len(json.dumps(m)) for m in messages)

    def estimate_tokens(self, extra_chars: int = 0) -> int:
        """The conversation's size in tokens: the server's own count of the prefix it last saw, plus
        about 4 characters a token for what was added since (and `extra_chars`, e.g. tool schemas)."""
        if self.anchor_len and self.anchor_len <= len(self.messages):
            return self.anchor_tokens + (self.chars(self.messages[self.anchor_len:]) + extra_chars) // 4
        return (self.chars(self.messages) + extra_chars) // 4

    def anchor(self, prompt_tokens: int, completion_tokens: int) -> None:
        """Called with a response's usage after its assistant message was added."""
        if prompt_tokens > 0:
            self.anchor_len = len(self.messages)
            self.anchor_tokens = prompt_tokens + completion_tokens

    def replace(self, messages: list[dict]) -> None:
        """After a compaction: the new, short conversation."""
        self.messages = messages
        self.anchor_len = self.anchor_tokens = 0
        self.sent = 0
        self.compactions += 1

    def unsent(self) -> list[dict]:
        new = self.messages[self.sent:]
        self.sent = len(self.messages)
        return new

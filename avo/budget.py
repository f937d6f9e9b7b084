"""The run's budget: wall-clock time that continues across restarts, versions and attempts.

Elapsed time is persisted in <run_dir>/state/budget.json after every attempt, so a 7-day budget means 7
days of running in total however often the run is stopped and restarted.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional


def write_json_atomic(path: Path, data: dict) -> None:
    """Write-then-rename, so a crash leaves the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_json(path: Path, default: Optional[dict] = None) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return dict(default or {})


def format_duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    d, rem = divmod(seconds, 86400)
    h, rem = divmod(rem, 3600)
    m, s = divmod(rem, 60)
    if d:
        return f"{d}d{h:02d}h{m:02d}m"
    if h:
        return f"{h}h{m:02d}m{s:02d}s"
    return f"{m}m{s:02d}s"


@dataclass
class Budget:
    seconds: float
    max_versions: Optional[int]
    max_attempts: Optional[int]
    state_path: Path
    max_tokens: Optional[int] = None  # LLM tokens over the run (operators report them with `spend`)
    max_usd: Optional[float] = None  # LLM cost over the run

    def __post_init__(self) -> None:
        state = read_json(self.state_path)
        self._spent_before = float(state.get("elapsed_s", 0.0))
        self.tokens = int(state.get("tokens", 0))
        self.usd = float(state.get("usd", 0.0))
        self._started = time.monotonic()
        # Set when the run was asked to stop (SIGINT/SIGTERM): every check below then says so, so the loop
        # stops after the step in flight and an agent's step ends at its next turn.
        self.stop_reason: Optional[str] = None

    def spend(self, tokens: int, usd: float) -> None:
        """Count LLM tokens and cost (persisted with the next `save`)."""
        self.tokens += int(tokens)
        self.usd += float(usd)

    def over_spend(self) -> Optional[str]:
        """Why the token or money budget is spent (or the run asked to stop), or None (operators check it between
        model calls)."""
        if self.stop_reason is not None:
            return self.stop_reason
        if self.max_tokens is not None and self.tokens >= self.max_tokens:
            return f"{self.tokens} LLM tokens used (budget.max_tokens={self.max_tokens})"
        if self.max_usd is not None and self.usd >= self.max_usd:
            return f"${self.usd:.2f} of LLM calls spent (budget.max_usd={self.max_usd})"
        return None

    def elapsed(self) -> float:
        return self._spent_before + (time.monotonic() - self._started)

    def remaining(self) -> float:
        return max(0.0, self.seconds - self.elapsed())

    def save(self) -> None:
        write_json_atomic(self.state_path, {"elapsed_s": self.elapsed(), "limit_s": self.seconds,
                                            "tokens": self.tokens, "usd": self.usd})

    def exhausted(self, versions: int, attempts: int) -> Optional[str]:
        """Why the run must stop now, or None. `versions` excludes the seed."""
        if self.elapsed() >= self.seconds:
            return f"time budget of {format_duration(self.seconds)} spent"
        if self.max_versions is not None and versions >= self.max_versions:
            return f"{versions} versions committed (budget.max_versions={self.max_versions})"
        if self.max_attempts is not None and attempts >= self.max_attempts:
            return f"{attempts} attempts made (budget.max_attempts={self.max_attempts})"
        return self.over_spend()

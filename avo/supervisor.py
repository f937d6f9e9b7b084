"""The supervisor: detects stalls and unproductive cycles, and redirects the search.

Before every step the loop asks `Supervisor.before_step` for guidance. The supervisor looks at the attempt
log and the committed versions and triggers on

- a stall: no committed version for `stall_attempts` attempts or `stall_hours` hours of running time;
- repeated failures: the last `repeat_failures` attempts failed the same way (the same stage and the same
  first error line, with numbers, addresses and paths normalised away);
- a plateau: the last `plateau_versions` versions' scores lie within `plateau_pct` percent of each other.

When it triggers, with a model (the agent's, or `supervisor.model`) it makes one call reviewing the
trajectory (scores per version and configuration, recent failures, notes) and hands the operator
`directions` concrete new directions (`StepContext.guidance`) for the next `guidance_steps` steps or until a
version is committed; without a model (heuristic runs) it widens the mutation instead (an operator with a
`mutations` attribute gets `widen_factor` times as many for `widen_steps` steps).

Every intervention is appended to `<run_dir>/supervisor.jsonl`, logged to the tracker and mentioned in the
notes of the next committed version. The supervisor's state (interventions, the guidance in force, the
cooldown) is kept in `<run_dir>/state/supervisor.json` and restored when the run continues.
"""
from __future__ import annotations

import json
import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from avo.budget import read_json, write_json_atomic
from avo.lineage import search_steps

log = logging.getLogger(__name__)

TRIGGERS = ("stall_attempts", "stall_hours", "repeated_failure", "plateau")


@dataclass
class SupervisorSettings:
    """Plain values (the `supervisor` config group carries the same fields)."""

    enabled: bool = True
    stall_attempts: Optional[int] = 30
    stall_hours: Optional[float] = 6.0
    repeat_failures: Optional[int] = 5
    plateau_versions: Optional[int] = 5
    plateau_pct: float = 1.0
    cooldown_attempts: int = 10
    directions: int = 3
    guidance_steps: int = 10
    widen_factor: int = 3
    widen_steps: int = 10
    max_history: int = 40  # attempts shown to the model


_NUMBER_RE = re.compile(r"0x[0-9a-fA-F]+|\d+(\.\d+)?(e[-+]?\d+)?")
_PATH_RE = re.compile(r"(/[^\s:'\"]+)+")


def failure_kind(record: dict) -> Optional[str]:
    """'<stage>: <first error line, normalised>' of a failed attempt, None for a correct one."""
    if record.get("correct") or record.get("outcome") == "seed":
        return None
    error = str(record.get("error") or "")
    first = next((line.strip() for line in error.splitlines() if line.strip()), "")
    first = _NUMBER_RE.sub("N", _PATH_RE.sub("<path>", first))[:160]
    return f"{record.get('stage') or '?'}: {first}"


def parse_directions(text: str, k: int) -> list[str]:
    """Up to k directions from a reply: a JSON list of strings, or numbered/bulleted lines."""
    text = text.strip()
    m = re.search(r"\[.*\]", text, re.DOTALL)
    if m:
        try:
            items = json.loads(m.group(0))
            if isinstance(items, list) and all(isinstance(i, str) for i in items) and items:
                return [i.strip() for i in items if i.strip()][:k]
        except ValueError:
            pass
    out: list[str] = []
    for line in text.splitlines():
        mm = re.match(r"^\s*(?:\d+[.)]|[-*•])\s+(.*\S)", line)
        if mm:
            out.append(mm.group(1))
        elif out and line.strip() and line.startswith((" ", "\t")):
            out[-1] += " " + line.strip()
    if not out and text:
        out = [p.strip() for p in re.split(r"\n\s*\n", text) if p.strip()]
    return out[:k]


SYSTEM_PROMPT = (
    "You supervise a long-running evolutionary search in which a coding agent improves a GPU attention kernel "
    "one committed version at a time. The search has stalled or is cycling. Review its trajectory and give "
    "{k} concrete, distinct new directions the agent has not tried yet (each one or two sentences: what to change "
    "in the program and why it could help on the configurations that lag). Answer with a JSON list of {k} strings "
    "and nothing else."
)


class Supervisor:
    def __init__(self, settings: SupervisorSettings, run_dir: Path, *, client: Any = None,
                 tracker: Any = None, notes: Optional[Callable[[], list[str]]] = None) -> None:
        self.s = settings
        self.run_dir = Path(run_dir)
        self.client = client  # an avo.llm.LLMClient, or None: widen the mutation instead
        self.tracker = tracker
        self.notes = notes or (lambda: [])
        self.log_path = self.run_dir / "supervisor.jsonl"
        self.state_path = self.run_dir / "state" / "supervisor.json"
        self.state = self._load()
        self._base_mutations: Optional[int] = None

    # ------------------------------------------------------------------ state

    def _load(self) -> dict:
        state = read_json(self.state_path)
        defaults = {"interventions": 0, "last_attempt": 0, "last_elapsed_s": 0.0, "plateau_version": None,
                    "guidance": "", "guidance_steps_left": 0, "widen_steps_left": 0, "pending_note": "",
                    "guidance_since_version": None}
        return {**defaults, **{k: v for k, v in state.items() if k in defaults}}

    def save(self) -> None:
        write_json_atomic(self.state_path, self.state)

    # ------------------------------------------------------------------ detection

    def check(self, attempts: list[dict], versions: list, elapsed_s: float) -> Optional[tuple[str, str]]:
        """(trigger, what triggered it) or None, given the attempt log, the branch's versions and the running
        time. Attempts before the last intervention (or within its cooldown) never trigger again."""
        s, st = self.s, self.state
        if not s.enabled:
            return None
        judged = search_steps(attempts)
        last_n = max((a.get("n", 0) for a in attempts), default=0)
        if st["interventions"] and last_n - st["last_attempt"] < s.cooldown_attempts:
            return None
        since = [a for a in judged if a.get("n", 0) > st["last_attempt"]]
        # Attempts since the last commit (or the last intervention, whichever came later).
        last_commit = max((a.get("n", 0) for a in attempts if a.get("version")), default=0)
        fresh = [a for a in since if a.get("n", 0) > last_commit]
        if s.stall_attempts and len(fresh) >= s.stall_attempts:
            return "stall_attempts", f"no version committed for {len(fresh)} attempts"
        if s.stall_hours:
            commit_elapsed = max((float(a.get("elapsed_s") or 0.0) for a in attempts if a.get("version")), default=0.0)
            idle = elapsed_s - max(commit_elapsed, float(st["last_elapsed_s"] if st["interventions"] else 0.0))
            if fresh and idle >= s.stall_hours * 3600:
                return "stall_hours", f"no version committed for {idle / 3600:.2f} hours of running"
        if s.repeat_failures and len(since) >= s.repeat_failures:
            kinds = {failure_kind(a) for a in since[-s.repeat_failures:]}
            if len(kinds) == 1 and None not in kinds:
                return "repeated_failure", f"the last {s.repeat_failures} attempts failed the same way: {kinds.pop()}"
        if s.plateau_versions and s.plateau_versions >= 2 and len(versions) >= s.plateau_versions:
            recent = versions[-s.plateau_versions:]
            scores = [v.score for v in recent]
            top = max(scores)
            if top > 0 and (top - min(scores)) / top * 100 <= s.plateau_pct and st["plateau_version"] != recent[-1].tag:
                return "plateau", (f"the last {len(recent)} versions ({recent[0].tag}..{recent[-1].tag}) score within "
                                   f"{(top - min(scores)) / top * 100:.2f}% of each other ({min(scores):.4g}..{top:.4g})")
        return None

    # ------------------------------------------------------------------ the step's guidance

    def before_step(self, *, step: int, attempts: list[dict], versions: list, elapsed_s: float,
                    operator: Any = None, budget: Any = None) -> str:
        """Check, intervene when triggered, apply the widening in force; the guidance for this step."""
        st = self.state
        if st["guidance"] and versions and st["guidance_since_version"] not in (None, versions[-1].tag):
            st["guidance"], st["guidance_steps_left"] = "", 0  # a version was committed since: it worked
        trigger = self.check(attempts, versions, elapsed_s)
        if trigger is not None:
            self.intervene(trigger[0], trigger[1], step=step, attempts=attempts, versions=versions,
                           elapsed_s=elapsed_s, operator=operator, budget=budget)
        self._apply_widening(operator)
        guidance = ""
        if st["guidance"] and st["guidance_steps_left"] > 0:
            guidance = st["guidance"]
            st["guidance_steps_left"] -= 1
        if st["widen_steps_left"] > 0:
            st["widen_steps_left"] -= 1
        self.save()
        return guidance

    def _apply_widening(self, operator: Any) -> None:
        if operator is None or not hasattr(operator, "mutations"):
            return
        if self._base_mutations is None:
            self._base_mutations = int(operator.mutations)
        widened = self._base_mutations * max(1, self.s.widen_factor)
        operator.mutations = widened if self.state["widen_steps_left"] > 0 else self._base_mutations

    def intervene(self, trigger: str, reason: str, *, step: int, attempts: list[dict], versions: list,
                  elapsed_s: float, operator: Any = None, budget: Any = None) -> dict:
        st, s = self.state, self.s
        st["interventions"] += 1
        last_n = max((a.get("n", 0) for a in attempts), default=0)
        record: dict = {"intervention": st["interventions"], "trigger": trigger, "reason": reason, "step": step,
                        "attempt": last_n, "elapsed_s": round(elapsed_s, 3), "timestamp": time.time(),
                        "best": max((v.score for v in versions), default=0.0)}
        directions: list[str] = []
        if self.client is not None:
            directions, usage, error = self._ask(trigger, reason, attempts, versions)
            if usage is not None:
                record["llm"] = usage.to_dict()
                if budget is not None:
                    budget.spend(usage.total, usage.cost_usd)
            if error:
                record["error"] = error
        if directions:
            record["action"] = "directions"
            record["directions"] = directions
            st["guidance"] = (f"The search {reason}. Try one of these new directions (intervention "
                              f"#{st['interventions']}):\n" + "\n".join(f"{i}. {d}" for i, d in enumerate(directions, 1)))
            st["guidance_steps_left"] = s.guidance_steps
            st["guidance_since_version"] = versions[-1].tag if versions else None
        else:
            record["action"] = "widen"
            st["widen_steps_left"] = s.widen_steps
            if operator is not None and hasattr(operator, "mutations"):
                base = self._base_mutations if self._base_mutations is not None else int(operator.mutations)
                record["mutations"] = base * max(1, s.widen_factor)
            record["widen_steps"] = s.widen_steps
            # An LLM operator without directions (the call failed) still hears that it should move further.
            st["guidance"] = (f"The search {reason}. Move further from the parent than before: change the "
                              "algorithm or its structure, not only a parameter, and avoid the failures above.")
            st["guidance_steps_left"] = s.guidance_steps
            st["guidance_since_version"] = versions[-1].tag if versions else None
        st["last_attempt"] = last_n
        st["last_elapsed_s"] = elapsed_s
        if trigger == "plateau" and versions:
            st["plateau_version"] = versions[-1].tag
        what = "; ".join(directions) if directions else f"widened the mutation for {s.widen_steps} steps"
        st["pending_note"] = (st["pending_note"] + "\n" if st["pending_note"] else "") + (
            f"Supervisor intervention #{st['interventions']} ({trigger}: {reason}): {what}")
        self._append(record)
        self.save()
        log.warning("supervisor: intervention #%d (%s: %s): %s", st["interventions"], trigger, reason, what[:300])
        if self.tracker is not None:
            self.tracker.log_intervention(record)
        return record

    def take_note(self) -> str:
        """The interventions since the last committed version (for its notes); cleared."""
        note, self.state["pending_note"] = self.state["pending_note"], ""
        if note:
            self.save()
        return note

    def _append(self, record: dict) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record, default=str) + "\n")
            f.flush()
            os.fsync(f.fileno())

    # ------------------------------------------------------------------ the model call

    def trajectory_text(self, reason: str, attempts: list[dict], versions: list) -> str:
        lines = [f"Why you are called: the search {reason}.", "", "## Committed versions (score in TFLOPS per configuration)"]
        for v in versions:
            configs = ", ".join(f"{c.get('label', i)} {float(c.get('tflops', 0) or 0):.3g}"
                                for i, c in enumerate(v.result.get("configs") or []) if isinstance(c, dict))
            first = v.message.splitlines()[0] if v.message else ""
            lines.append(f"- {v.tag}: {v.score:.4g} aggregate [{configs}] {first}"[:400])
        recent = search_steps(attempts)[-self.s.max_history:]
        lines += ["", f"## The last {len(recent)} attempts"]
        for a in recent:
            what = f"{float(a.get('score') or 0):.4g} TFLOPS" if a.get("correct") else failure_kind(a)
            config = f" config {a['config']}" if a.get("config") else ""
            lines.append(f"- #{a.get('n')} {a.get('outcome')}: {what}{config}"[:300])
        notes = [n for n in self.notes() if n][-20:]
        if versions and versions[-1].notes:
            notes.append(f"(notes of {versions[-1].tag}) {versions[-1].notes}")
        if notes:
            lines += ["", "## The agent's notes"] + [f"- {n[:500]}" for n in notes]
        return "\n".join(lines)

    def _ask(self, trigger: str, reason: str, attempts: list[dict], versions: list):
        from avo.llm import LLMError, LLMFatalError

        k = max(1, self.s.directions)
        messages = [{"role": "system", "content": SYSTEM_PROMPT.format(k=k)},
                    {"role": "user", "content": self.trajectory_text(reason, attempts, versions)}]
        try:
            reply = self.client.chat(messages)
        except (LLMError, LLMFatalError) as exc:
            log.warning("supervisor: the model call failed (%s); widening the mutation instead", exc)
            return [], None, str(exc)
        return parse_directions(reply.content or "", k), reply.usage, None

"""agent=avo: one variation step is one self-directed run of a coding agent (AVO, arXiv 2603.24517).

A linear loop, in the manner of mini-swe-agent: ask the model, run the actions it chose, append the
results, save; until a submission is accepted or a limit of the step is reached.

    step(ctx):
        workspace = a git worktree of the parent version
        memory += the step's opening message (lineage, recent attempts, the supervisor's guidance)
        loop:
            stop if a step limit (turns, evaluations, minutes, tokens) or the run's budget is reached
            compact the memory if it nears the context window
            reply = model(memory)                          # retries inside the client
            actions = parse(reply)                         # tool calls, or one ```action block (text protocol)
            a malformed reply gets a corrective message    # a run of them ends the step, not the run
            results = tools(actions)                       # submit -> Harness.submit judges, commits
            memory += reply, results; memory.save()
            stop when a submission was accepted

The conversation (memory.json) persists across steps and restarts; every request, response, tool call and
result is appended to trajectory.jsonl (see memory.py). Tokens and cost are counted per call and per step,
charged to the run's budget and written into every attempt record the step makes.
"""
from __future__ import annotations

import json
import logging
import re
import time
from typing import TYPE_CHECKING, Optional

from avo.llm import LLMClient, LLMContextOverflow, LLMError, LLMSettings, Reply
from avo.operators import OperatorDeps, StepContext, StepOutcome
from avo.operators.agent.memory import Memory, Trajectory
from avo.operators.agent.tools import ProtocolError, StepState, Toolbox
from avo.operators.prompts import (describe_attempts, describe_task, describe_versions, render, trim_middle)

if TYPE_CHECKING:
    from avo.config import AvoAgentConfig

log = logging.getLogger(__name__)

ACTION_RE = re.compile(r"```action[ \t]*\n(.*?)\n?```", re.DOTALL)
PROTOCOLS = ("tools", "text")


class AvoOperator:
    name = "avo"

    def __init__(self, cfg: "AvoAgentConfig", deps: OperatorDeps, client: Optional[LLMClient] = None) -> None:
        if cfg.protocol not in PROTOCOLS:
            raise ValueError(f"agent.protocol={cfg.protocol!r}: use 'tools' (native tool calling) or 'text' "
                             "(one fenced action block per reply, for servers without tool calling)")
        if cfg.context_window < 1000:
            raise ValueError(f"agent.context_window={cfg.context_window} is too small (at least 1000 tokens)")
        self.cfg = cfg
        self.deps = deps
        agent_dir = deps.run_dir / "agent"
        self.memory = Memory(agent_dir / "memory.json")
        self.trajectory = Trajectory(agent_dir / "trajectory.jsonl")
        self.client = client or LLMClient(LLMSettings.from_config(cfg), on_event=self.trajectory)
        self.tools = Toolbox(deps, output_chars=cfg.tool_output_chars, shell_timeout_s=cfg.shell_timeout_s,
                             knowledge_results=cfg.knowledge_results, max_evaluations=cfg.max_evaluations,
                             add_note=self.memory.notes.append)
        if self.memory.restored:
            log.info("agent: restored its conversation (%d messages, %d notes) from %s", len(self.memory.messages),
                     len(self.memory.notes), self.memory.path)

    # ------------------------------------------------------------------ prompts

    def system_prompt(self, ctx: StepContext) -> str:
        c = self.cfg
        protocol = (render("agent_text_protocol.md", c.prompts_dir, tools=self.tools.describe()) if c.protocol == "text"
                    else render("agent_tools_protocol.md", c.prompts_dir))
        return render("agent_system.md", c.prompts_dir, task=describe_task(self.deps.task, self.deps.grid),
                      grid_name=self.deps.grid.name, noise_margin=f"{ctx.harness.margin():.3g}",
                      max_turns=c.max_turns, max_evaluations=c.max_evaluations,
                      max_step_minutes=f"{c.max_step_minutes:g}", protocol=protocol,
                      knowledge="- The knowledge base (search_knowledge, read_knowledge) holds documentation and reference "
                                "code: GPU architecture, FlashAttention, Triton, CUDA, profiling."
                      if self.deps.knowledge is not None else "")

    def step_message(self, ctx: StepContext, state: StepState) -> str:
        lineage = self.deps.lineage
        best = lineage.best(ctx.branch) or ctx.best
        bar = best.score * (1 - ctx.harness.margin()) if best else 0.0
        guidance = f"\n## Guidance from the supervisor\n{ctx.guidance}\n" if ctx.guidance else ""
        return render("agent_step.md", self.cfg.prompts_dir, step=ctx.step, parent=ctx.parent.tag,
                      parent_score=f"{ctx.parent.score:.4g} TFLOPS", branch=ctx.branch,
                      best=f"{best.tag} at {best.score:.4g} TFLOPS" if best else "none", bar=f"{bar:.4g}",
                      files=", ".join(lineage.files(ctx.parent)), versions=describe_versions(lineage.versions(ctx.branch)),
                      attempts=describe_attempts(ctx.history), guidance=guidance)

    # ------------------------------------------------------------------ the step

    def step(self, ctx: StepContext) -> StepOutcome:
        workspace = ctx.workspace / "program"
        self.deps.lineage.add_worktree(ctx.parent, workspace)
        state = StepState(ctx=ctx, workspace=workspace)
        self._waited_at_start = getattr(self.client, "waited_s", 0.0)
        self.tools.state = state
        self.trajectory.step, self.trajectory.turn = ctx.step, 0
        note = "?"
        try:
            note = self._run(ctx, state)
        finally:
            self.memory.save()
            ctx.harness.budget.save()
            self.trajectory.turn = state.turns
            self.trajectory.event("step_end", committed=state.committed.tag if state.committed else None, note=note,
                                  turns=state.turns, evaluations=state.evaluations, attempts=state.attempts,
                                  usage=state.usage.to_dict(), elapsed_s=round(time.monotonic() - state.started, 3))
            self.tools.state = None
            try:
                self.deps.lineage.remove_worktree(workspace)
            except Exception as exc:  # noqa: BLE001 - a leftover worktree is pruned by git later
                log.warning("agent: could not remove the worktree %s (%s)", workspace, exc)
        extra = {"turns": state.turns, "evaluations": state.evaluations, "llm": state.usage.to_dict(),
                 "tokens": state.usage.total, "cost_usd": round(state.usage.cost_usd, 6)}
        return StepOutcome(committed=state.committed, attempts=state.attempts, note=note, extra=extra)

    def _limit(self, state: StepState) -> Optional[str]:
        c, budget = self.cfg, state.ctx.harness.budget
        if state.turns >= c.max_turns:
            return f"the step's limit of {c.max_turns} turns"
        if state.evaluations >= c.max_evaluations:
            return f"the step's limit of {c.max_evaluations} evaluations"
        # Time spent waiting out a model-server outage is not charged to the step.
        waited = getattr(self.client, "waited_s", 0.0) - getattr(self, "_waited_at_start", 0.0)
        if time.monotonic() - state.started - waited >= c.max_step_minutes * 60:
            return f"the step's limit of {c.max_step_minutes:g} minutes"
        if c.max_step_tokens is not None and state.usage.total >= c.max_step_tokens:
            return f"the step's limit of {c.max_step_tokens} tokens"
        if budget.remaining() <= 0:
            return "the run's time budget"
        return budget.over_spend()

    def _run(self, ctx: StepContext, state: StepState) -> str:
        mem, c = self.memory, self.cfg
        mem.steps += 1
        mem.set_system(self.system_prompt(ctx))
        opening = self.step_message(ctx, state)
        mem.add_user(opening)
        self._opening = opening
        self.trajectory.event("step_start", parent=ctx.parent.tag, branch=ctx.branch, workspace=str(state.workspace),
                              restored=mem.restored and mem.steps == 1)
        mem.save()
        tools = self.tools.specs() if c.protocol == "tools" else None
        tool_chars = len(json.dumps(tools)) if tools else 0
        errors = 0
        while True:
            if (limit := self._limit(state)) is not None:
                return f"stopped at {limit} without an accepted submission"
            # Compact when the conversation nears the window (not right after a compaction: [system, summary]).
            if len(mem.messages) > 3 and mem.estimate_tokens(tool_chars) >= c.compact_at * c.context_window:
                self.compact(ctx, state)
            self.trajectory.turn = state.turns + 1
            self.trajectory.event("request", messages_total=len(mem.messages), new_messages=mem.unsent(),
                                  tools=bool(tools), model=c.model)
            try:
                reply = self.client.chat(mem.messages, tools=tools)
            except LLMContextOverflow as exc:
                errors += 1
                if errors >= c.max_consecutive_errors:
                    return f"ended: {exc}"
                self.compact(ctx, state)
                continue
            except LLMError as exc:
                log.warning("agent: step %d ends on a model error: %s", ctx.step, exc)
                return f"ended by a model error: {exc}"
            state.turns += 1
            self._account(state, reply)
            ok = self._act(state, reply)
            errors = 0 if ok else errors + 1
            mem.save()
            state.ctx.harness.budget.save()
            if state.committed is not None:
                return f"{state.committed.tag} accepted: {state.verdict}"
            if errors >= c.max_consecutive_errors:
                return f"ended after {errors} malformed replies in a row"

    def _account(self, state: StepState, reply: Reply) -> None:
        u = reply.usage
        state.usage.add(u)
        self.memory.usage.add(u)
        state.ctx.harness.budget.spend(u.total, u.cost_usd)

    # ------------------------------------------------------------------ acting

    def _correct(self, kind: str, message: str) -> None:
        self.trajectory.event("protocol_error", kind=kind, message=message)
        self.memory.add_user(f"[harness] {message}")

    def _length_hint(self) -> str:
        return (f"Your reply was cut off at the output limit (agent.max_output_tokens={self.cfg.max_output_tokens}). "
                "Write shorter replies: small edit_file changes instead of whole files, less text before the action.")

    def _act(self, state: StepState, reply: Reply) -> bool:
        """Run the reply's actions; False when the reply was malformed (a corrective message was added)."""
        mem = self.memory
        if reply.empty:
            self._correct("empty", "The server returned no reply (no choices). Continue with your next action.")
            return False
        if self.cfg.protocol == "text":
            mem.add({"role": "assistant", "content": reply.content or ""})
            mem.anchor(reply.usage.prompt, reply.usage.output)
            return self._act_text(state, reply)
        mem.add(reply.assistant_message())
        mem.anchor(reply.usage.prompt, reply.usage.output)
        if not reply.tool_calls:
            if reply.finish_reason == "length":
                self._correct("length", self._length_hint())
            else:
                self._correct("no_action", "No tool was called. Act through tool calls; the step ends only when a "
                              "submission is accepted (submit).")
            return False
        ok = False
        malformed = []
        for call in reply.tool_calls:
            if state.committed is not None:
                mem.add({"role": "tool", "tool_call_id": call.id, "content": "skipped: the step is over"})
                continue
            try:
                args = self.tools.parse_arguments(call.name, call.arguments)
            except ProtocolError as exc:
                text = f"error: {exc}" + (f" {self._length_hint()}" if reply.finish_reason == "length" else "")
                self.trajectory.event("protocol_error", kind="tool_call", tool=call.name, message=str(exc))
                mem.add({"role": "tool", "tool_call_id": call.id, "content": text})
                malformed.append(call.name)
                continue
            result = self._run_tool(call.name, args)
            mem.add({"role": "tool", "tool_call_id": call.id, "content": result})
            ok = True
        return ok

    def _act_text(self, state: StepState, reply: Reply) -> bool:
        blocks = ACTION_RE.findall(reply.content or "")
        if not blocks:
            if reply.finish_reason == "length":
                self._correct("length", self._length_hint())
            else:
                self._correct("no_action", "No action found. End every reply with exactly one fenced block:\n"
                              "```action\n{\"tool\": \"<name>\", \"arguments\": {...}}\n```")
            return False
        if len(blocks) > 1:
            self._correct("several_actions", f"Your reply has {len(blocks)} action blocks; none was run. Send exactly "
                          "one action per reply and wait for its result.")
            return False
        try:
            action = json.loads(blocks[0], strict=False)  # raw newlines in strings are common
            if not isinstance(action, dict) or not isinstance(action.get("tool"), str):
                raise ProtocolError('the action must be a JSON object {"tool": "<name>", "arguments": {...}}')
            name = action["tool"]
            args = self.tools.parse_arguments(name, action.get("arguments", action.get("args", {})))
        except json.JSONDecodeError as exc:
            self._correct("malformed", f"The action block is not valid JSON ({exc.msg} at character {exc.pos}); "
                          "nothing was run. Send it again.")
            return False
        except ProtocolError as exc:
            self._correct("malformed", f"error: {exc}")
            return False
        result = self._run_tool(name, args)
        self.memory.add_user(f"Result of {name}:\n{result}")
        return True

    def _run_tool(self, name: str, args: dict) -> str:
        self.trajectory.event("tool_call", tool=name, arguments=args)
        started = time.monotonic()
        result = self.tools.call(name, args)
        self.trajectory.event("tool_result", tool=name, result=result, elapsed_s=round(time.monotonic() - started, 3))
        return result

    # ------------------------------------------------------------------ compaction

    def compact(self, ctx: StepContext, state: StepState) -> None:
        """Summarise the conversation with one model call; keep the task (system prompt), the notes, the best
        version and the current step's opening message. Without a summary (the call failed), the last turns
        are kept as text instead."""
        mem, c = self.memory, self.cfg
        before = mem.estimate_tokens()
        budget_chars = int(c.context_window * 0.5 * 4)
        transcript = self._transcript(mem.messages[1:], budget_chars)
        request = [{"role": "system", "content": render("agent_compact.md", c.prompts_dir,
                                                        max_words=max(150, c.context_window // 20))},
                   {"role": "user", "content": transcript}]
        self.trajectory.event("request", purpose="compaction", messages_total=len(request), new_messages=request,
                              tools=False, model=c.model)
        try:
            reply = self.client.chat(request)
            self._account(state, reply)
            summary = (reply.content or "").strip() or "(the summary came back empty)"
        except LLMError as exc:
            summary = f"(no summary: {exc})\nThe last part of the conversation:\n{self._transcript(mem.messages[1:], budget_chars // 4)}"
        best = self.deps.lineage.best(ctx.branch)
        text = render("agent_compacted.md", c.prompts_dir, compactions=mem.compactions + 1, summary=summary,
                      notes="\n".join(f"- {n}" for n in mem.notes) or "(none)",
                      best=best.summary() + (f"\n{best.notes}" if best and best.notes else "") if best else "(none)",
                      step_message=getattr(self, "_opening", "") + (
                          "\n\n(The workspace still holds your edits so far: `git diff` shows them.)"
                          if state.turns else ""))
        mem.replace([mem.messages[0], {"role": "user", "content": text}])
        self.trajectory.event("compaction", tokens_before=before, tokens_after=mem.estimate_tokens(), summary=summary,
                              messages=mem.messages)
        mem.save()

    @staticmethod
    def _transcript(messages: list[dict], limit: int) -> str:
        parts = []
        for m in messages:
            content = str(m.get("content") or "")
            if m["role"] == "tool":
                content = trim_middle(content, 2000)
            calls = "".join(f"\n-> {tc['function']['name']}({trim_middle(tc['function']['arguments'], 1500)})"
                            for tc in m.get("tool_calls") or [])
            parts.append(f"[{m['role']}] {trim_middle(content, 6000)}{calls}")
        text = "\n\n".join(parts)
        return text if len(text) <= limit else "[... earlier conversation elided ...]\n" + text[-limit:]

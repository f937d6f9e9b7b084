"""agent=cli: any external coding-agent command as the variation operator (Claude Code, Codex, Aider, ...).

One step: a git worktree of the parent version as the workspace; the configured command runs there with
the step's prompt (as one argument `{prompt}`, as a file `{prompt_file}`, and/or on stdin), in its own
process group with a timeout after which the whole group is killed; then the harness judges what it left,
exactly like a submission. NOTES.md, if the command wrote one, becomes the version's notes (and is not
part of the program). The command's output is kept in `<run_dir>/agent/cli/step-<n>.log`. Environment
variables that look secret (*KEY*, *TOKEN*, *SECRET*) are withheld unless named in `agent.pass_env`.
"""
from __future__ import annotations

import logging
import shlex
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from avo.errors import UserError
from avo.llm import redact, scrubbed_env
from avo.operators import OperatorDeps, StepContext, StepOutcome
from avo.operators.common import changed_files, run_command
from avo.operators.prompts import describe_attempts, describe_task, describe_versions, render, trim_middle

if TYPE_CHECKING:
    from avo.config import CliAgentConfig

log = logging.getLogger(__name__)

NOTES_FILE = "NOTES.md"


class CliOperator:
    name = "cli"

    def __init__(self, cfg: "CliAgentConfig", deps: OperatorDeps) -> None:
        self.cfg = cfg
        self.deps = deps
        if not cfg.command.strip():
            raise UserError("agent=cli needs a command: agent.command='my-agent --prompt-file {prompt_file}' "
                            "(or a preset: agent=cli_claude, cli_codex, cli_aider)")
        try:
            self.argv = shlex.split(cfg.command)
        except ValueError as exc:
            raise UserError(f"agent.command={cfg.command!r} does not parse as a command line ({exc})") from None
        if shutil.which(self.argv[0]) is None and not Path(self.argv[0]).is_file():
            raise UserError(f"agent.command: {self.argv[0]!r} is not installed (not on PATH); install it or give "
                            "another command")
        self.log_dir = deps.run_dir / "agent" / "cli"
        self.log_dir.mkdir(parents=True, exist_ok=True)

    def prompt(self, ctx: StepContext) -> str:
        lineage = self.deps.lineage
        best = lineage.best(ctx.branch) or ctx.best
        bar = best.score * (1 - ctx.harness.margin()) if best else 0.0
        guidance = f"\n## Guidance\n{ctx.guidance}\n" if ctx.guidance else ""
        return render("cli.md", self.cfg.prompts_dir, parent=ctx.parent.tag, parent_score=f"{ctx.parent.score:.4g} TFLOPS",
                      bar=f"{bar:.4g}", task=describe_task(self.deps.task, self.deps.grid),
                      eval_command=f"{sys.executable} -m avo.cli eval . task={self.deps.task.name} "
                                   f"benchmark={self.deps.grid.name}",
                      versions=describe_versions(lineage.versions(ctx.branch)), attempts=describe_attempts(ctx.history),
                      guidance=guidance)

    def step(self, ctx: StepContext) -> StepOutcome:
        lineage = self.deps.lineage
        workspace = lineage.add_worktree(ctx.parent, ctx.workspace / "program")
        try:
            prompt = self.prompt(ctx)
            prompt_file = ctx.workspace / "prompt.md"
            prompt_file.write_text(prompt)
            values = {"{prompt}": prompt, "{prompt_file}": str(prompt_file), "{workspace}": str(workspace)}
            argv = []
            for token in self.argv:
                for key, value in values.items():
                    token = token.replace(key, value)
                argv.append(token)
            env = {**scrubbed_env(keep=tuple(self.cfg.pass_env)), **{k: str(v) for k, v in self.cfg.env.items()}}
            done = run_command(argv, cwd=workspace, env=env, timeout_s=self.cfg.timeout_s,
                               stdin_text=prompt if self.cfg.stdin else None)
            output = redact(done.output)
            (self.log_dir / f"step-{ctx.step}.log").write_text(
                f"$ {redact(self.cfg.command)}\n[{done.status}]\n{output}")
            notes_path = workspace / NOTES_FILE
            notes = ""
            if notes_path.is_file() and NOTES_FILE not in lineage.files(ctx.parent):
                notes = notes_path.read_text(errors="replace").strip()
                notes_path.unlink()
            tail = trim_middle(output, self.cfg.output_chars)
            meta = {"command_status": done.status, "command_exit": done.code, "command_s": round(done.elapsed_s, 2)}
            if not changed_files(lineage, ctx.parent, workspace):
                result = {"stage": "unchanged", "correct": False, "score": 0.0, "configs": [],
                          "error": f"the command left the program unchanged ({done.status}):\n{tail}"}
                ctx.harness.record(workspace, result, "invalid", ctx.parent, meta)
                return StepOutcome(attempts=1, note=f"no change ({done.status})")
            first = notes.splitlines()[0].lstrip("# ").strip()[:100] if notes else Path(self.argv[0]).name
            verdict = ctx.harness.submit(workspace, branch=ctx.branch, parent=ctx.parent, message=f"cli: {first}",
                                         notes=(notes or "(no NOTES.md)") + f"\n\n## Command output ({done.status})\n{tail}",
                                         meta=meta)
            return StepOutcome(committed=verdict.version, attempts=1, note=verdict.reason,
                               extra={"command_s": done.elapsed_s})
        finally:
            try:
                lineage.remove_worktree(workspace)
            except Exception as exc:  # noqa: BLE001
                log.warning("cli: could not remove the worktree %s (%s)", workspace, exc)

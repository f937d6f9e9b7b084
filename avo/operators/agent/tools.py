"""The agent's tools: JSON-schema'd functions over its workspace, the harness, the lineage and the knowledge base.

Every tool returns text for the model (trimmed head and tail, with the elision counted). A mistake the
model can fix (a missing file, an edit that does not match, a path outside the workspace) comes back as
a `ToolError` with a message that says what is valid; protocol mistakes (unknown tool, missing or
malformed arguments) are `ProtocolError`s, which the loop counts. Only `evaluate` and `submit` reach the
evaluator, through the harness: `Harness.trial` records an "evaluated" attempt, `Harness.submit` judges.
"""
from __future__ import annotations

import json
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

from avo.lineage import LineageError, Version
from avo.llm import Usage, redact, scrubbed_env
from avo.operators.common import changed_files, program_files, run_command
from avo.operators.prompts import describe_result, describe_versions, trim_middle

if TYPE_CHECKING:
    from avo.operators import OperatorDeps, StepContext

class ToolError(Exception):
    """The tool could not do what was asked; the message goes back to the model."""


class ProtocolError(Exception):
    """Unknown tool, missing or malformed arguments: a malformed action (counted by the loop)."""


@dataclass
class StepState:
    """What one variation step has done so far (shared by the loop and the tools)."""

    ctx: "StepContext"
    workspace: Path
    started: float = field(default_factory=time.monotonic)
    turns: int = 0
    evaluations: int = 0  # evaluate + submit
    attempts: int = 0  # attempts recorded by the harness
    committed: Optional[Version] = None
    verdict: str = ""
    notes: list[str] = field(default_factory=list)
    usage: Usage = field(default_factory=Usage)

    def meta(self) -> dict:
        """Accounting that goes into every attempt record of the step (attempts.jsonl, W&B)."""
        return {"agent_step": self.ctx.step, "turn": self.turns, "llm": self.usage.to_dict(),
                "tokens": self.usage.total, "cost_usd": round(self.usage.cost_usd, 6)}


@dataclass
class Tool:
    name: str
    description: str
    parameters: dict  # JSON schema (type: object)
    fn: Callable[..., str]

    def spec(self) -> dict:
        return {"type": "function", "function": {"name": self.name, "description": self.description,
                                                 "parameters": self.parameters}}


def _schema(props: dict, required: list[str]) -> dict:
    return {"type": "object", "properties": props, "required": required, "additionalProperties": False}


S, I, B = {"type": "string"}, {"type": "integer"}, {"type": "boolean"}


def _d(schema: dict, description: str) -> dict:
    return {**schema, "description": description}


class Toolbox:
    def __init__(self, deps: "OperatorDeps", *, output_chars: int = 12_000, shell_timeout_s: float = 300.0,
                 knowledge_results: int = 5, max_evaluations: int = 30,
                 add_note: Callable[[str], None] = lambda text: None) -> None:
        self.deps = deps
        self.output_chars = output_chars
        self.shell_timeout_s = shell_timeout_s
        self.knowledge_results = knowledge_results
        self.max_evaluations = max_evaluations
        self.add_note = add_note
        self.state: Optional[StepState] = None
        self.tools: dict[str, Tool] = {}
        for tool in self._define():
            self.tools[tool.name] = tool

    # ------------------------------------------------------------------ definitions

    def _define(self) -> list[Tool]:
        tools = [
            Tool("list_files", "List the files of the workspace (or of one folder of it) with their sizes.",
                 _schema({"path": _d(S, "folder relative to the workspace; default: the whole workspace")}, []),
                 self.list_files),
            Tool("read_file", "Read a workspace file, with line numbers (optionally a range of lines).",
                 _schema({"path": _d(S, "path relative to the workspace"),
                          "start_line": _d(I, "first line (1-based), default 1"),
                          "end_line": _d(I, "last line (inclusive), default the end")}, ["path"]),
                 self.read_file),
            Tool("write_file", "Create or overwrite a workspace file with the given content.",
                 _schema({"path": _d(S, "path relative to the workspace"), "content": _d(S, "the whole file")},
                         ["path", "content"]), self.write_file),
            Tool("edit_file", "Replace an exact piece of text in a workspace file. old_text must occur exactly "
                 "once (or set replace_all); copy it from read_file without the line numbers.",
                 _schema({"path": S, "old_text": _d(S, "text to find, exactly"), "new_text": _d(S, "its replacement"),
                          "replace_all": _d(B, "replace every occurrence (default false)")},
                         ["path", "old_text", "new_text"]), self.edit_file),
            Tool("run_shell", "Run a bash command in the workspace (compile, test, profile, git diff, ...). "
                 "Output (stdout and stderr) is trimmed; the whole process group is killed at the timeout. "
                 "API keys are not in its environment.",
                 _schema({"command": S, "timeout_s": _d(I, f"seconds, at most {int(self.shell_timeout_s)}")},
                         ["command"]), self.run_shell),
            Tool("evaluate", "Evaluate the workspace with the project's evaluator without submitting it: "
                 "compile, correctness on small odd shapes and on every grid configuration, then timing. "
                 "grid 'quick' (first and last configurations, faster) or 'full'. Recorded as an attempt.",
                 _schema({"grid": {"type": "string", "enum": ["quick", "full"], "description": "default quick"}}, []),
                 self.evaluate),
            Tool("submit", "Submit the workspace as the next version. The harness evaluates it on the full grid "
                 "and commits it only if it is correct and at least as fast as the best version (within the noise "
                 "margin); an accepted submission ends the step.",
                 _schema({"message": _d(S, "one line: what changed (the commit message)"),
                          "notes": _d(S, "the hypothesis and what you observed (kept with the version)")},
                         ["message"]), self.submit),
            Tool("list_versions", "The committed versions of the lineage with their scores and messages.",
                 _schema({}, []), self.list_versions),
            Tool("show_version", "A committed version: its files, one file's content, or its score and notes.",
                 _schema({"version": _d(S, "'best', 'latest', 'vN' or '<branch>/vN'"),
                          "path": _d(S, "a file to show; omit for the list of files, score and notes")},
                         ["version"]), self.show_version),
            Tool("diff_versions", "Unified diff of the program between two committed versions, or from a version "
                 "to the workspace ('workspace').",
                 _schema({"a": _d(S, "a version ('v3', 'best', ...)"), "b": _d(S, "a version or 'workspace'")},
                         ["a", "b"]), self.diff_versions),
            Tool("note", "Keep a note (a hypothesis, a finding, a plan): notes persist across steps and summaries.",
                 _schema({"text": S}, ["text"]), self.note),
        ]
        if self.deps.knowledge is not None:
            tools += [
                Tool("search_knowledge", "Search the knowledge base (documentation and reference code of attention "
                     "kernels, GPUs, Triton, CUDA): the best-matching passages with their paths and lines.",
                     _schema({"query": S, "k": _d(I, f"number of passages, default {self.knowledge_results}")},
                             ["query"]), self.search_knowledge),
                Tool("read_knowledge", "Read a file of the knowledge base (a path from search_knowledge), "
                     "optionally a range of lines.",
                     _schema({"path": S, "start_line": I, "end_line": I}, ["path"]), self.read_knowledge),
            ]
        return tools

    def specs(self) -> list[dict]:
        return [t.spec() for t in self.tools.values()]

    def describe(self) -> str:
        """The tools as text (for the text protocol)."""
        out = []
        for t in self.tools.values():
            props = t.parameters.get("properties", {})
            req = set(t.parameters.get("required", []))
            args = ", ".join(f"{k}{'' if k in req else '?'}: {v.get('type', 'any')}" for k, v in props.items())
            out.append(f"- {t.name}({args}): {t.description}")
        return "\n".join(out)

    # ------------------------------------------------------------------ dispatch

    def parse_arguments(self, name: str, raw: Any) -> dict:
        if name not in self.tools:
            raise ProtocolError(f"unknown tool {name!r}; the tools are: {', '.join(self.tools)}")
        if isinstance(raw, dict):
            args = raw
        else:
            text = (raw or "").strip() or "{}"
            try:
                args = json.loads(text, strict=False)  # tolerate raw newlines inside strings
            except json.JSONDecodeError as exc:
                raise ProtocolError(f"the arguments of {name} are not valid JSON ({exc.msg} at character {exc.pos}); "
                                    "send the call again with a JSON object") from None
        if not isinstance(args, dict):
            raise ProtocolError(f"the arguments of {name} must be a JSON object, got {type(args).__name__}")
        params = self.tools[name].parameters
        missing = [k for k in params.get("required", []) if k not in args]
        if missing:
            raise ProtocolError(f"{name} is missing required argument(s) {missing}; its parameters: "
                                f"{json.dumps(params.get('properties', {}))}")
        props = params.get("properties", {})
        unknown = [k for k in args if k not in props]
        if unknown:
            raise ProtocolError(f"{name} has no argument(s) {unknown}; its parameters: {sorted(props)}")
        for k, v in list(args.items()):
            if props[k].get("type") == "integer" and isinstance(v, str) and v.strip().lstrip("-").isdigit():
                args[k] = int(v)
        return args

    def call(self, name: str, args: dict) -> str:
        """Run a tool on parsed arguments; ToolError's message is returned as the result."""
        try:
            out = self.tools[name].fn(**args)
        except ToolError as exc:
            out = f"error: {exc}"
        except (TypeError, ValueError, OSError, LineageError) as exc:
            out = f"error: {type(exc).__name__}: {exc}"
        return trim_middle(redact(out), self.output_chars)

    # ------------------------------------------------------------------ workspace

    @property
    def workspace(self) -> Path:
        assert self.state is not None, "no step in progress"
        return self.state.workspace

    def _path(self, path: str, must_exist: bool = False) -> Path:
        root = self.workspace.resolve()
        p = (root / str(path)).resolve()
        if p != root and root not in p.parents:
            raise ToolError(f"{path!r} is outside the workspace; give a path relative to it (e.g. 'kernel.py')")
        if ".git" in p.relative_to(root).parts:
            raise ToolError("the workspace's .git is not part of the program")
        if must_exist and not p.exists():
            raise ToolError(f"no file {path!r} in the workspace; files: {', '.join(self._files()[:50])}")
        return p

    def _files(self) -> list[str]:
        return program_files(self.workspace)

    def list_files(self, path: str = ".") -> str:
        base = self._path(path, must_exist=True)
        files = [f for f in self._files() if (self.workspace / f).resolve().is_relative_to(base)]
        return "\n".join(f"{f} ({(self.workspace / f).stat().st_size} bytes)" for f in files) or "(no files)"

    def read_file(self, path: str, start_line: int = 1, end_line: Optional[int] = None) -> str:
        p = self._path(path, must_exist=True)
        if p.is_dir():
            raise ToolError(f"{path!r} is a folder; use list_files")
        lines = p.read_text(errors="replace").splitlines()
        start = max(1, int(start_line or 1))
        end = len(lines) if end_line is None else min(len(lines), int(end_line))
        width = len(str(max(end, 1)))
        body = "\n".join(f"{i:>{width}}  {lines[i - 1]}" for i in range(start, end + 1))
        return f"{path} (lines {start}-{end} of {len(lines)}):\n{body}"

    def write_file(self, path: str, content: str) -> str:
        p = self._path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(content)
        return f"wrote {path} ({len(content.splitlines())} lines, {len(content)} characters)"

    def edit_file(self, path: str, old_text: str, new_text: str, replace_all: bool = False) -> str:
        p = self._path(path, must_exist=True)
        text = p.read_text()
        count = text.count(old_text) if old_text else 0
        if count == 0:
            raise ToolError(f"old_text was not found in {path}; read the file again and copy the text exactly "
                            "(whitespace included, without line numbers)")
        if count > 1 and not replace_all:
            raise ToolError(f"old_text occurs {count} times in {path}; include more context to make it unique, "
                            "or set replace_all")
        p.write_text(text.replace(old_text, new_text) if replace_all else text.replace(old_text, new_text, 1))
        return f"edited {path}: replaced {count if replace_all else 1} occurrence(s)"

    def run_shell(self, command: str, timeout_s: Optional[int] = None) -> str:
        timeout = min(float(timeout_s or self.shell_timeout_s), self.shell_timeout_s)
        done = run_command(["bash", "-c", command], cwd=self.workspace, env=scrubbed_env(), timeout_s=timeout)
        return f"$ {command}\n[{done.status}]\n{done.output}"

    # ------------------------------------------------------------------ harness

    def _changed(self) -> list[str]:
        return changed_files(self.deps.lineage, self.state.ctx.parent, self.workspace)

    def _bar(self) -> str:
        best = self.deps.lineage.best(self.state.ctx.branch)
        margin = self.state.ctx.harness.margin()
        if best is None:
            return "no committed version yet"
        return f"best committed {best.tag}: {best.score:.4g} TFLOPS; acceptance needs >= {best.score * (1 - margin):.4g}"

    def evaluate(self, grid: str = "quick") -> str:
        st = self.state
        if grid not in ("quick", "full"):
            raise ToolError("grid must be 'quick' or 'full'")
        if st.evaluations >= self.max_evaluations:
            raise ToolError(f"the step's limit of {self.max_evaluations} evaluations is reached; submit or stop")
        st.evaluations += 1
        record = st.ctx.harness.trial(self.workspace, quick=grid == "quick", parent=st.ctx.parent, meta=st.meta())
        st.attempts += 1
        return f"attempt #{record.get('n')} ({record.get('grid')} grid): {describe_result(record.get('result') or {})}\n{self._bar()}"

    def submit(self, message: str, notes: str = "") -> str:
        st = self.state
        if st.evaluations >= self.max_evaluations:
            raise ToolError(f"the step's limit of {self.max_evaluations} evaluations is reached")
        if not self._changed():
            raise ToolError(f"the workspace is identical to the parent {st.ctx.parent.tag}: change something first")
        st.evaluations += 1
        all_notes = "\n\n".join([n for n in st.notes] + ([notes] if notes else []))
        verdict = st.ctx.harness.submit(self.workspace, branch=st.ctx.branch, parent=st.ctx.parent,
                                        message=message.strip() or "avo", notes=all_notes, meta=st.meta())
        st.attempts += 1
        st.verdict = verdict.reason
        detail = describe_result(verdict.result)
        if verdict.accepted:
            st.committed = verdict.version
            return (f"ACCEPTED as {verdict.version.tag} (attempt #{verdict.record.get('n')}): {verdict.reason}.\n{detail}\n"
                    "The step is over.")
        return (f"REJECTED (attempt #{verdict.record.get('n')}): {verdict.reason}.\n{detail}\n{self._bar()}\n"
                "Keep working and submit again.")

    # ------------------------------------------------------------------ lineage

    def _version(self, ref: str) -> Version:
        try:
            return self.deps.lineage.resolve(ref, self.state.ctx.branch)
        except LineageError as exc:
            raise ToolError(str(exc)) from None

    def list_versions(self) -> str:
        return describe_versions(self.deps.lineage.versions(self.state.ctx.branch), limit=50) + "\n" + self._bar()

    def show_version(self, version: str, path: Optional[str] = None) -> str:
        v = self._version(version)
        if path:
            try:
                return f"{v.tag}:{path}\n{self.deps.lineage.read_file(v, path)}"
            except LineageError as exc:
                raise ToolError(str(exc)) from None
        return (f"{v.summary()}\nmessage: {v.message}\nfiles: {', '.join(self.deps.lineage.files(v))}\n"
                f"result: {describe_result(v.result)}\nnotes:\n{v.notes or '(none)'}")

    def diff_versions(self, a: str, b: str) -> str:
        va = self._version(a)
        if b == "workspace":
            proc = subprocess.run(["git", "diff", "--no-color", va.sha, "--", ".", ":(exclude).avo"], cwd=self.workspace,
                                  capture_output=True, text=True)
            untracked = subprocess.run(["git", "ls-files", "--others", "--exclude-standard"], cwd=self.workspace,
                                       capture_output=True, text=True).stdout.split()
            extra = f"\nnew files: {', '.join(untracked)}" if untracked else ""
            return (proc.stdout or f"(no differences from {va.tag})") + extra
        vb = self._version(b)
        return self.deps.lineage.diff(va, vb) or f"(no differences between {va.tag} and {vb.tag})"

    def note(self, text: str) -> str:
        self.state.notes.append(text.strip())
        self.add_note(text.strip())
        return "noted"

    # ------------------------------------------------------------------ knowledge

    def search_knowledge(self, query: str, k: Optional[int] = None) -> str:
        hits = self.deps.knowledge.search(query, k=int(k or self.knowledge_results))
        if not hits:
            return f"no passages match {query!r}; try other words"
        per = max(400, self.output_chars // max(1, len(hits)) - 200)
        return "\n\n".join(f"[{i}] {h.path}:{h.line}-{h.end_line} {h.title} (score {h.score})\n{trim_middle(h.text, per)}"
                           for i, h in enumerate(hits, 1))

    def read_knowledge(self, path: str, start_line: int = 1, end_line: Optional[int] = None) -> str:
        try:
            return self.deps.knowledge.read(path, start_line, end_line)
        except ValueError as exc:
            raise ToolError(str(exc)) from None

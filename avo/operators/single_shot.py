"""agent=single_shot: the fixed pipeline of prior work (FunSearch, AlphaEvolve, OpenEvolve).

One step: sample a parent and a few inspirations from the lineage (score-weighted), make one LLM call that
returns SEARCH/REPLACE blocks or whole files, apply them, and submit the result to the harness. A reply
whose edits cannot be applied is recorded as an attempt with outcome "invalid" (stage "apply", the
reason as its error) and costs no evaluation. Same client, trajectory and accounting as agent=avo.
"""
from __future__ import annotations

import logging
import random
import re
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from avo.llm import LLMClient, LLMError, LLMSettings
from avo.operators import OperatorDeps, StepContext, StepOutcome
from avo.operators.agent.memory import Trajectory
from avo.operators.prompts import describe_task, render, trim_middle, version_files

if TYPE_CHECKING:
    from avo.config import SingleShotAgentConfig
    from avo.lineage import Version

log = logging.getLogger(__name__)

SEARCH_RE = re.compile(r"<<<<<<< ?SEARCH[^\n]*\n(.*?)^=======[^\n]*\n(.*?)^>>>>>>> ?REPLACE[^\n]*$", re.DOTALL | re.MULTILINE)
FILE_RE = re.compile(r"^```[\w+-]*[ \t]+(?:file|path)=([^\s`]+)[ \t]*\n(.*?)^```[ \t]*$", re.DOTALL | re.MULTILINE)


class EditError(ValueError):
    """The model's edits do not apply to the parent."""


def weighted_sample(versions: list["Version"], k: int, rng: random.Random) -> list["Version"]:
    """k distinct versions, drawn with probability proportional to score (a small floor keeps every one possible)."""
    pool = list(versions)
    out: list["Version"] = []
    top = max((v.score for v in pool), default=0.0)
    while pool and len(out) < k:
        weights = [max(v.score, 0.0) + 0.05 * top + 1e-9 for v in pool]
        pick = rng.choices(range(len(pool)), weights=weights)[0]
        out.append(pool.pop(pick))
    return out


def _path_before(text: str, pos: int) -> Optional[str]:
    """The file path named on the last non-fence line before `pos` (the SEARCH/REPLACE convention)."""
    for line in reversed(text[:pos].splitlines()[-3:]):
        line = line.strip().strip("`*#: ").strip()
        if not line or line.startswith("```") or line in ("python", "cuda", "cpp"):
            continue
        if re.fullmatch(r"[\w./-]+\.\w+", line):
            return line
        return None
    return None


def parse_edits(text: str) -> list[tuple[str, Optional[str], str]]:
    """[(path, search or None for a whole file, replacement)] in the order they appear."""
    edits: list[tuple[int, tuple[str, Optional[str], str]]] = []
    for m in SEARCH_RE.finditer(text):
        search, replace = m.group(1), m.group(2)
        edits.append((m.start(), (_path_before(text, m.start()) or "kernel.py", search.rstrip("\n"), replace.rstrip("\n"))))
    for m in FILE_RE.finditer(text):
        edits.append((m.start(), (m.group(1), None, m.group(2))))
    return [e for _, e in sorted(edits, key=lambda t: t[0])]


def apply_edits(root: Path, edits: list[tuple[str, Optional[str], str]]) -> list[str]:
    """Apply edits to the program in `root`; returns the files changed. Raises EditError with the reason."""
    changed = []
    base = root.resolve()
    for path, search, replace in edits:
        target = (base / path).resolve()
        if base not in target.parents:
            raise EditError(f"{path!r} is outside the program")
        if search is None:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(replace if replace.endswith("\n") else replace + "\n")
        elif not target.exists():
            if search.strip():
                raise EditError(f"{path}: no such file in the parent")
            target.write_text(replace + "\n")
        else:
            text = target.read_text()
            if not search.strip():
                text = text + ("" if text.endswith("\n") else "\n") + replace + "\n"
            elif text.count(search) == 1:
                text = text.replace(search, replace, 1)
            elif text.count(search) > 1:
                raise EditError(f"{path}: the SEARCH text occurs {text.count(search)} times; it must be unique")
            else:
                # Tolerate trailing-whitespace differences, line by line.
                lines, want = text.splitlines(), [s.rstrip() for s in search.splitlines()]
                hits = [i for i in range(len(lines) - len(want) + 1)
                        if [s.rstrip() for s in lines[i:i + len(want)]] == want]
                if len(hits) != 1:
                    raise EditError(f"{path}: the SEARCH text was not found exactly once:\n{trim_middle(search, 500)}")
                i = hits[0]
                text = "\n".join(lines[:i] + replace.splitlines() + lines[i + len(want):]) + "\n"
            target.write_text(text)
        changed.append(path)
    return changed


class SingleShotOperator:
    name = "single_shot"

    def __init__(self, cfg: "SingleShotAgentConfig", deps: OperatorDeps, client: Optional[LLMClient] = None) -> None:
        self.cfg = cfg
        self.deps = deps
        self.trajectory = Trajectory(deps.run_dir / "agent" / "trajectory.jsonl")
        self.client = client or LLMClient(LLMSettings.from_config(cfg), on_event=self.trajectory)

    def prompt(self, ctx: StepContext, parent: "Version", inspirations: list["Version"]) -> str:
        lineage = self.deps.lineage
        best = lineage.best(ctx.branch) or ctx.best
        bar = best.score * (1 - ctx.harness.margin()) if best else 0.0
        insp = []
        for v in inspirations:
            diff = lineage.diff(parent, v)
            insp.append(f"### {v.tag} ({v.score:.4g} TFLOPS): {v.message.splitlines()[0] if v.message else ''}\n"
                        f"Diff from the parent {parent.tag}:\n```diff\n{trim_middle(diff, 6000) or '(identical)'}\n```")
        return render("single_shot.md", self.cfg.prompts_dir, task=describe_task(self.deps.task, self.deps.grid),
                      bar=f"{bar:.4g}", inspirations="\n\n".join(insp) or "(none)", parent=parent.tag,
                      parent_score=f"{parent.score:.4g} TFLOPS",
                      files=version_files(lineage, parent, self.cfg.max_file_chars))

    def step(self, ctx: StepContext) -> StepOutcome:
        lineage = self.deps.lineage
        versions = [v for v in lineage.versions(ctx.branch) if v.correct] or [ctx.parent]
        parent = weighted_sample(versions, 1, ctx.rng)[0]
        others = [v for v in versions if v.sha != parent.sha]
        inspirations = weighted_sample(others, self.cfg.inspirations, ctx.rng)
        prompt = self.prompt(ctx, parent, inspirations)
        if ctx.guidance:
            prompt += f"\n## Guidance from the supervisor\n{ctx.guidance}\n"
        self.trajectory.step, self.trajectory.turn = ctx.step, 1
        self.trajectory.event("request", parent=parent.tag, inspirations=[v.tag for v in inspirations],
                              new_messages=[{"role": "user", "content": prompt}], messages_total=1, model=self.cfg.model)
        try:
            reply = self.client.chat([{"role": "user", "content": prompt}])
        except LLMError as exc:
            return StepOutcome(note=f"model error: {exc}")
        usage = reply.usage
        ctx.harness.budget.spend(usage.total, usage.cost_usd)
        meta = {"llm": usage.to_dict(), "tokens": usage.total, "cost_usd": round(usage.cost_usd, 6),
                "inspirations": [v.tag for v in inspirations]}
        extra = {"llm": usage.to_dict(), "tokens": usage.total, "cost_usd": round(usage.cost_usd, 6)}
        workspace = ctx.workspace / "program"
        lineage.export(parent, workspace)
        text = reply.content or ""
        idea = text.split("<<<<<<<")[0].split("```")[0].strip()
        try:
            edits = parse_edits(text)
            if not edits:
                raise EditError("the reply has no SEARCH/REPLACE block and no ```lang file=PATH block"
                                + (" (it was cut off at max_output_tokens)" if reply.finish_reason == "length" else ""))
            changed = apply_edits(workspace, edits)
        except EditError as exc:
            result = {"stage": "apply", "correct": False, "score": 0.0, "error": str(exc), "configs": []}
            ctx.harness.record(workspace, result, "invalid", parent, {**meta, "notes": idea[:4000]})
            self.trajectory.event("step_end", committed=None, note=f"invalid: {exc}", usage=usage.to_dict())
            return StepOutcome(attempts=1, note=f"invalid reply: {exc}", extra=extra)
        first = idea.splitlines()[0][:100] if idea else "edit"
        verdict = ctx.harness.submit(workspace, branch=ctx.branch, parent=parent,
                                     message=f"single_shot: {first}", notes=idea or f"Edited {', '.join(changed)}.",
                                     meta=meta)
        self.trajectory.event("step_end", committed=verdict.version.tag if verdict.version else None,
                              note=verdict.reason, usage=usage.to_dict())
        return StepOutcome(committed=verdict.version, attempts=1, note=verdict.reason, extra=extra)

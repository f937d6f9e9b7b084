"""Prompt templates of the LLM operators, and the plain-text views of the run they are filled with.

Templates are the `*.md` files of this directory (string.Template syntax: `${name}`; `$$` is a dollar).
A run may use its own: `agent.prompts_dir=<dir>` is searched first, file by file.
"""
from __future__ import annotations

import string
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Optional

from avo.lineage import search_steps

if TYPE_CHECKING:
    from avo.lineage import Lineage, Version
    from avo.task import Grid, Task

HERE = Path(__file__).resolve().parent


def render(name: str, prompts_dir: Optional[str] = None, **values: object) -> str:
    """Template `name` (e.g. "agent_system.md") with `values` substituted; a missing value is an error."""
    for folder in ([Path(prompts_dir)] if prompts_dir else []) + [HERE]:
        path = folder / name
        if path.is_file():
            return string.Template(path.read_text()).substitute({k: str(v) for k, v in values.items()}).strip() + "\n"
    raise FileNotFoundError(f"no prompt template {name!r} in {prompts_dir or ''} {HERE}")


def trim_middle(text: str, limit: int) -> str:
    """Head and tail of `text` within about `limit` characters, saying how much was left out."""
    if limit <= 0 or len(text) <= limit:
        return text
    head = limit * 2 // 3
    tail = limit - head
    lines_out = text[head:len(text) - tail].count("\n")
    return f"{text[:head]}\n[... {len(text) - head - tail} characters ({lines_out} lines) elided ...]\n{text[-tail:]}"


def describe_task(task: "Task", grid: "Grid") -> str:
    from avo.task import grid_shapes

    shapes = grid_shapes(task, grid)
    lines = [
        f"Task {task.name}: attention forward, {'causal' if task.causal else 'non-causal'}, "
        f"{task.heads_q} query heads on {task.heads_kv} KV heads (group {task.group}), head_dim {task.head_dim}, "
        f"{task.dtype}; correct when |out - ref| <= {task.atol} + {task.rtol} * |ref| against a float32 reference.",
        f"Benchmark grid {grid.name!r} (the score is the geometric mean of TFLOPS over these configurations):",
    ]
    lines += [f"  - {s.label}: batch {s.batch}, seqlen {s.seqlen}, heads {s.heads_q}/{s.heads_kv}, "
              f"head_dim {s.head_dim}, {s.dtype}, {'causal' if s.causal else 'non-causal'}" for s in shapes]
    return "\n".join(lines)


def describe_result(result: dict, error_chars: int = 3000) -> str:
    """The evaluator's JSON as a few lines: stage, correctness, score, per-configuration figures, the error."""
    if result.get("correct"):
        head = f"correct; score {float(result.get('score') or 0.0):.4g} TFLOPS (grid {result.get('grid')})"
    else:
        head = f"FAILED at stage {result.get('stage')!r} (grid {result.get('grid')}); score 0"
    lines = [head]
    for c in result.get("configs") or []:
        if not isinstance(c, dict):
            continue
        parts = [f"{c.get('label')}:"]
        if c.get("tflops"):
            parts.append(f"{float(c['tflops']):.4g} TFLOPS")
        if c.get("ms") is not None:
            parts.append(f"{float(c['ms']):.4g} ms")
        if c.get("max_err") is not None:
            parts.append(f"max_err {float(c['max_err']):.3g} (tol {c.get('tol_atol')} + {c.get('tol_rtol')}*|ref|)")
        lines.append("  " + " ".join(parts))
    for key in ("baselines",):
        if result.get(key):
            lines.append(f"{key}: {result[key]}")
    if result.get("flags"):
        lines.append(f"flags: {result['flags']}")
    if result.get("error"):
        lines.append("error:\n" + trim_middle(str(result["error"]), error_chars))
    elif not result.get("correct") and result.get("log"):
        lines.append("log:\n" + trim_middle(str(result["log"]), error_chars))
    return "\n".join(lines)


def describe_versions(versions: Iterable["Version"], limit: int = 20) -> str:
    versions = list(versions)
    shown = versions[-limit:]
    lines = [] if len(shown) == len(versions) else [f"({len(versions) - len(shown)} earlier versions not shown)"]
    for v in shown:
        msg = (v.message.splitlines()[0] if v.message else "")[:120]
        lines.append(f"{v.tag}: {v.score:.4g} TFLOPS{'' if v.correct else ' (incorrect)'}"
                     f"{f' from {v.parent}' if v.parent else ''} - {msg}")
    return "\n".join(lines) or "(no versions yet)"


def describe_attempts(history: list[dict], limit: int = 8) -> str:
    recent = search_steps(history)[-limit:]
    lines = []
    for a in recent:
        what = (f"{float(a.get('score') or 0):.4g} TFLOPS" if a.get("correct")
                else f"failed at {a.get('stage')}: {str(a.get('error') or '').strip().splitlines()[-1:] or ['?']}")
        lines.append(f"#{a.get('n')} {a.get('outcome')} ({a.get('operator', '?')}, parent {a.get('parent')}): {what[:200]}")
    return "\n".join(lines) or "(no attempts yet)"


def version_files(lineage: "Lineage", version: "Version", max_chars: int) -> str:
    """Every text file of a version, fenced, each trimmed to `max_chars`."""
    out = []
    for path in lineage.files(version):
        text = lineage.read_file(version, path)
        if "\0" in text:
            continue
        out.append(f"### {path}\n```\n{trim_middle(text, max_chars)}\n```")
    return "\n\n".join(out)

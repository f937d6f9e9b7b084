"""The program contract seen from outside: a directory with kernel.py, optional TUNABLES and CONFIG.

Operators read and rewrite TUNABLES/CONFIG through the source text (with `ast`), never by importing the
program: importing may compile native code or run anything, which only the evaluator's worker may do.
"""
from __future__ import annotations

import ast
import shutil
from pathlib import Path

ENTRY = "kernel.py"
CONTRACT = "a program is a directory with kernel.py defining attention(q, k, v, *, causal, sm_scale)"


class ProgramError(ValueError):
    """A program directory that breaks the contract, with a message naming the fix."""


def check_program_dir(path: Path) -> Path:
    path = Path(path)
    if not path.is_dir():
        raise ProgramError(f"program directory {path} does not exist: {CONTRACT}")
    if not (path / ENTRY).is_file():
        raise ProgramError(f"{path} has no {ENTRY}: {CONTRACT}")
    return path


def copy_program(src: Path, dest: Path) -> Path:
    """Copy a program tree, leaving out caches (stale build outputs are not the program), the lineage's
    metadata and a worktree's .git link."""
    shutil.copytree(src, dest, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", ".avo", ".git"),
                    dirs_exist_ok=True)
    return dest


def _literal_assignments(source: str) -> dict[str, tuple[ast.AST, object]]:
    found = {}
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            name, value = node.targets[0].id, node.value
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None:
            name, value = node.target.id, node.value
        else:
            continue
        if name in ("TUNABLES", "CONFIG"):
            try:
                found[name] = (node, ast.literal_eval(value))
            except ValueError as exc:
                raise ProgramError(f"{name} in {ENTRY} must be a literal dict (found code: {exc})") from None
    return found


def read_tunables(program_dir: Path) -> tuple[dict[str, list], dict[str, object]]:
    """(TUNABLES, CONFIG) of a program; empty dicts when it declares none."""
    source = (Path(program_dir) / ENTRY).read_text()
    try:
        found = _literal_assignments(source)
    except SyntaxError as exc:
        raise ProgramError(f"{ENTRY} does not parse: {exc}") from None
    tunables = found.get("TUNABLES", (None, {}))[1]
    config = found.get("CONFIG", (None, {}))[1]
    if not isinstance(tunables, dict) or not isinstance(config, dict):
        raise ProgramError(f"TUNABLES and CONFIG in {ENTRY} must be dicts")
    bad = [k for k, v in tunables.items() if not isinstance(v, (list, tuple)) or not v]
    if bad:
        raise ProgramError(f"TUNABLES entries must be non-empty lists of allowed values: {bad}")
    return {k: list(v) for k, v in tunables.items()}, config


def write_config(program_dir: Path, config: dict[str, object]) -> None:
    """Rewrite the CONFIG literal of kernel.py in place, keeping every other byte of the file."""
    path = Path(program_dir) / ENTRY
    source = path.read_text()
    found = _literal_assignments(source)
    if "CONFIG" not in found:
        raise ProgramError(f"{ENTRY} has no module-level CONFIG = {{...}} to rewrite")
    node = found["CONFIG"][0]
    lines = source.splitlines(keepends=True)
    start, end = node.lineno - 1, node.end_lineno - 1
    prefix, suffix = lines[start][: node.col_offset], lines[end][node.end_col_offset :]
    body = "".join(f"    {k!r}: {v!r},\n" for k, v in config.items())
    new = f"{prefix}CONFIG = {{\n{body}}}{suffix}"
    path.write_text("".join(lines[:start]) + new + "".join(lines[end + 1 :]))

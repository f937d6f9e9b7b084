"""Helpers shared by the operators that edit a workspace: its files, what changed, and running commands in it."""
from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:
    from avo.lineage import Lineage, Version

SKIP_DIRS = {".git", "__pycache__", ".avo"}


def program_files(root: Path) -> list[str]:
    """Relative paths of a workspace's program files (no .git, .avo, caches)."""
    out = []
    for dirpath, dirs, names in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS)
        for n in sorted(names):
            if n.endswith(".pyc") or n == ".git":
                continue
            out.append(str((Path(dirpath) / n).relative_to(root)))
    return out


def changed_files(lineage: "Lineage", version: "Version", root: Path) -> list[str]:
    """Program files of `root` that differ from `version` (added, removed or edited)."""
    before = set(lineage.files(version))
    now = set(program_files(root))
    changed = before ^ now
    for f in before & now:
        try:
            if (root / f).read_bytes() != lineage.read_file(version, f).encode("utf-8"):
                changed.add(f)
        except OSError:
            changed.add(f)
    return sorted(changed)


@dataclass
class Completed:
    code: Optional[int]  # None when killed at the timeout
    output: str  # stdout and stderr, interleaved
    elapsed_s: float
    timed_out: bool

    @property
    def status(self) -> str:
        if self.timed_out:
            return f"killed after the timeout (the whole process group), {self.elapsed_s:.1f}s"
        return f"exit code {self.code}, {self.elapsed_s:.1f}s"


def run_command(argv: list[str], *, cwd: Path, env: dict, timeout_s: float, stdin_text: Optional[str] = None) -> Completed:
    """Run `argv` in its own process group; at the timeout the whole group is killed. Output goes through a
    file, not a pipe, so a grandchild that keeps the pipe open cannot hang the caller."""
    started = time.monotonic()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as inp:
        if stdin_text is not None:
            inp.write(stdin_text.encode())
            inp.seek(0)
        proc = subprocess.Popen(argv, cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                                stdin=inp if stdin_text is not None else subprocess.DEVNULL, env=env,
                                start_new_session=True)
        timed_out = False
        try:
            code: Optional[int] = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            timed_out, code = True, None
        finally:
            try:  # also what the command left running in the background
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            proc.wait()
        out.seek(0)
        text = out.read().decode("utf-8", "replace")
    return Completed(code, text, time.monotonic() - started, timed_out)

"""The lineage store: committed versions and every attempt of one run, in a git repository.

Layout (see DESIGN.md, "The lineage store"):

- ``<run_dir>/lineage``: a normal git repository with a work tree. One branch per lineage (``main``,
  ``island-<i>``). A committed version is a commit of the program tree plus ``.avo/score.json`` (the
  evaluator's result, exactly as given) and ``.avo/notes.md`` (the operator's notes), tagged
  ``<branch>/v<N>`` (lightweight tag). Version 0 of a branch is its seed. The commit message carries a score
  summary and git trailers (``Avo-Version: <branch>/v<N>``, ``Avo-Parent: <tag>``) that make the commit
  self-describing, so a crash between committing and tagging can be repaired on reopen.
- ``refs/attempts/<n>``: the tree of every attempt (accepted or not) as a commit that no branch contains.
- ``<run_dir>/attempts.jsonl``: one JSON line per attempt, the operator's record plus ``n``, ``sha``,
  ``timestamp`` (and ``parent``, the parent version's tag, when one was given).

Why it is written the way it is:

- Commits are built from git objects directly (blobs, trees and the commit object written into the object
  database through GitPython), never through the index or the work tree. A commit is therefore independent
  of whatever the work tree holds, attempts never disturb a branch, and an interrupted write leaves at worst
  an unreferenced object. The order is: objects, then the ref (compare-and-swap ``git update-ref``), then
  the tag, then the work tree is synced to the branch head. A version is "real" once tagged.
- ``Lineage(run_dir)`` repairs what a crash can leave: an untagged version commit at a branch head is tagged
  (its trailer tells branch and number), stale git lock files are removed, and a work tree that differs
  from HEAD is reset (the work tree is a mirror of the last commit, not a place to edit).
- Writers take an exclusive ``flock`` on ``lineage/.git/avo.lock``, so several processes (islands) may
  commit to different branches and record attempts in the same run concurrently. A ``Lineage`` object
  itself (its GitPython ``Repo``) is not thread-safe: use one per thread or process.
- The program's own ``.avo/`` directory, ``.git`` entries (a worktree link), ``__pycache__`` and ``*.pyc``
  are never committed as program files: ``.avo/`` is the store's namespace.

GitPython is used in this module and nowhere else in the project.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import re
import stat
import time
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Iterator, Optional, Union

import git
from gitdb import IStream

from avo.errors import UserError

log = logging.getLogger(__name__)

AUTHOR_NAME = "avo"
AUTHOR_EMAIL = "avo@localhost"
META_DIR = ".avo"
SCORE_FILE = f"{META_DIR}/score.json"
NOTES_FILE = f"{META_DIR}/notes.md"
ATTEMPTS_FILE = "attempts.jsonl"
ATTEMPT_REF_PREFIX = "refs/attempts/"
SKIP_DIRS = {"__pycache__", ".git"}
SKIP_SUFFIXES = (".pyc",)
_BRANCH_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]*$")
_VERSION_TRAILER_RE = re.compile(r"^Avo-Version: (\S+)/v(\d+)\s*$", re.MULTILINE)
_PARENT_TRAILER_RE = re.compile(r"^Avo-Parent: (\S+)\s*$", re.MULTILINE)
_SCORE_HEADER = "Score: "
_ZERO_SHA = "0" * 40
_MODE_FILE, _MODE_EXEC, _MODE_LINK, _MODE_TREE = b"100644", b"100755", b"120000", b"40000"


class LineageError(Exception):
    """A lineage operation that cannot be done as asked; the message says what is valid instead."""


class DiskFullError(UserError):
    """The disk filled up while the lineage was written: the run ends with a message naming the fix."""


def _disk_full(exc: BaseException) -> bool:
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return isinstance(exc, git.exc.GitCommandError) and "no space left on device" in str(exc).lower()


# Attempt-log lines that are not steps of the search: the seed's evaluation and the noise calibration (the
# best version timed alongside itself). Budgets, step numbers, prompts and the supervisor count steps only.
NOT_STEPS = frozenset({"seed", "calibration"})


def search_steps(attempts: list[dict]) -> list[dict]:
    return [a for a in attempts if a.get("outcome") not in NOT_STEPS]


@dataclass
class Version:
    """One committed version of a lineage (a tagged commit)."""

    branch: str
    number: int
    sha: str
    tag: str  # f"{branch}/v{number}"
    result: dict  # the evaluator's result, from .avo/score.json
    notes: str  # .avo/notes.md
    message: str  # the operator's message (the commit message without the generated summary/scores)
    timestamp: float  # commit time, seconds since the epoch
    parent: Optional[str] = None  # tag of the version it was derived from, when the operator said so

    @property
    def score(self) -> float:
        return float(self.result.get("score", 0.0) or 0.0)

    @property
    def lineage_score(self) -> float:
        """The score on the lineage's own scale, which ranks versions (see `Harness.submit`): the measured
        score, or for a version judged against a re-timed incumbent, the incumbent's lineage score times the
        ratio of the two scores timed alongside each other."""
        value = self.result.get("lineage_score")
        return float(value) if value is not None else self.score

    @property
    def correct(self) -> bool:
        return bool(self.result.get("correct", False))

    def summary(self) -> str:
        return f"{self.tag}: {_score_summary(self.result)}"


def _score_summary(result: dict) -> str:
    score = float(result.get("score", 0.0) or 0.0)
    return f"{score:.1f} TFLOPS ({'correct' if result.get('correct') else 'incorrect'})"


def _config_lines(result: dict) -> list[str]:
    lines = []
    for i, c in enumerate(result.get("configs") or []):
        if not isinstance(c, dict):
            continue
        label = c.get("label") or c.get("name") or f"config {i}"
        try:
            tflops = f"{float(c.get('tflops', 0.0) or 0.0):.1f}"
        except (TypeError, ValueError):
            tflops = str(c.get("tflops"))
        lines.append(f"  {label}: {tflops} TFLOPS")
    return lines


def _natural_key(s: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)]


def _check_dest(dest: Path) -> Path:
    dest = Path(dest)
    if dest.exists():
        if not dest.is_dir():
            raise LineageError(f"export destination {dest} exists and is not a directory")
        if any(dest.iterdir()):
            raise LineageError(f"export destination {dest} is not empty; give an empty or missing directory")
    dest.mkdir(parents=True, exist_ok=True)
    return dest


class Lineage:
    """The versions and attempts of one run; see the module docstring for the layout and guarantees."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / "lineage"
        self.attempts_path = self.run_dir / ATTEMPTS_FILE
        self._cache: dict[str, tuple[dict, str, str, Optional[str], float]] = {}
        self._warned: set[bytes] = set()  # corrupt attempts.jsonl lines already reported
        if (self.path / ".git").exists():
            try:
                self.repo = git.Repo(self.path)
            except git.exc.GitError as e:
                raise LineageError(f"{self.path} is not a readable git repository ({e}); move it away to start afresh") from e
        else:
            if self.path.exists() and any(self.path.iterdir()):
                raise LineageError(
                    f"{self.path} exists, is not empty and is not a git repository; remove it or use another run_dir"
                )
            self.path.mkdir(parents=True, exist_ok=True)
            # No commit yet: the default branch is born with the first commit. (symbolic-ref rather than
            # `init --initial-branch`, which git < 2.28 lacks.)
            self.repo = git.Repo.init(self.path)
            self.repo.git.symbolic_ref("HEAD", "refs/heads/main")
            with self.repo.config_writer() as cw:
                # Explicit identity (CI machines have none) and no signing/CRLF surprises from global config.
                cw.set_value("user", "name", AUTHOR_NAME)
                cw.set_value("user", "email", AUTHOR_EMAIL)
                cw.set_value("commit", "gpgsign", "false")
                cw.set_value("tag", "gpgsign", "false")
                cw.set_value("core", "autocrlf", "false")
        self.repo.git.update_environment(
            GIT_AUTHOR_NAME=AUTHOR_NAME,
            GIT_AUTHOR_EMAIL=AUTHOR_EMAIL,
            GIT_COMMITTER_NAME=AUTHOR_NAME,
            GIT_COMMITTER_EMAIL=AUTHOR_EMAIL,
            GIT_TERMINAL_PROMPT="0",
        )
        with self._locked():
            self._recover()

    # ------------------------------------------------------------------ lifecycle

    def close(self) -> None:
        """Stop GitPython's persistent helper processes."""
        self.repo.close()

    def __enter__(self) -> "Lineage":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Exclusive lock for writers, across processes and threads (one open file description per call)."""
        lock_path = Path(self.repo.git_dir) / "avo.lock"
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    @contextlib.contextmanager
    def _disk_guard(self, what: str) -> Iterator[None]:
        """A full disk while writing becomes a DiskFullError naming the fix. Writes are ordered so that what
        was committed before stays intact (objects first, refs last; see the module docstring)."""
        try:
            yield
        except (OSError, git.exc.GitCommandError) as exc:
            if not _disk_full(exc):
                raise
            raise DiskFullError(
                f"the disk holding {self.run_dir} is full (No space left on device) while {what}. Nothing committed "
                f"was lost: the lineage in {self.path} is intact. Free some space (old runs under outputs/, "
                f"`git -C {self.path} gc --prune=now`), then continue the run with the same command or "
                f"`python run.py resume={self.run_dir}`.") from None

    # ------------------------------------------------------------------ recovery

    def _recover(self) -> None:
        """Repair what an interrupted write can leave behind (called with the lock held)."""
        git_dir = Path(self.repo.git_dir)
        # Every writer holds our lock, so git lock files seen now are left over from a killed process.
        stale = [git_dir / n for n in ("index.lock", "HEAD.lock", "packed-refs.lock")]
        stale += list((git_dir / "refs").rglob("*.lock"))
        for p in stale:
            if p.exists():
                log.warning("lineage: removing stale git lock file %s (left by an interrupted write)", p)
                p.unlink()
        for branch, head in self._refs("refs/heads/").items():
            self._tag_untagged(branch.removeprefix("refs/heads/"), head)
        self._recover_attempts()
        self._sync_worktree(check=True)

    def _recover_attempts(self) -> None:
        """An attempt whose ref was written but whose attempts.jsonl line was not (a crash in between) gets its
        line back from its commit (outcome "interrupted", the evaluator's result from .avo/score.json)."""
        refs = {}
        for ref, sha in self._refs(ATTEMPT_REF_PREFIX).items():
            tail = ref[len(ATTEMPT_REF_PREFIX):]
            if tail.isdigit():
                refs[int(tail)] = sha
        have = {a["n"] for a in self.attempts() if isinstance(a.get("n"), int)}
        for n in sorted(set(refs) - have):
            sha = refs[n]
            commit = self.repo.commit(sha)
            try:
                result = json.loads(self._read(sha, SCORE_FILE) or b"{}")
            except json.JSONDecodeError:
                result = {}
            parent = _PARENT_TRAILER_RE.findall(commit.message)
            line = {"outcome": "interrupted", "recovered": True, "score": float(result.get("score", 0.0) or 0.0),
                    "correct": bool(result.get("correct")), "stage": result.get("stage"), "error": result.get("error"),
                    "result": result, "parent": parent[-1] if parent else None, "version": None, "n": n, "sha": sha,
                    "timestamp": float(commit.committed_date)}
            log.warning("lineage: attempt %d has a ref but no line in %s (a crash in between): recovered from git",
                        n, self.attempts_path)
            self._append_line(json.dumps(line, default=str))

    def _tag_untagged(self, branch: str, head: str) -> None:
        """Tag version commits at the head of `branch` that lost their tag to a crash (commit done, tag not)."""
        sha = head
        for _ in range(1000):
            commit = self.repo.commit(sha)
            found = _VERSION_TRAILER_RE.findall(commit.message)
            if not found:
                return
            tag_branch, number = found[-1]
            tag = f"{tag_branch}/v{int(number)}"
            existing = self._ref_sha(f"refs/tags/{tag}")
            if existing == sha:
                return
            if existing is not None:
                log.warning("lineage: commit %s says it is %s, but that tag points to %s; left as is", sha[:10], tag, existing[:10])
                return
            log.warning("lineage: tagging %s as %s (a crash interrupted its commit before the tag)", sha[:10], tag)
            self.repo.git.update_ref("-m", "avo: recover tag", f"refs/tags/{tag}", sha, _ZERO_SHA)
            if not commit.parents:
                return
            sha = commit.parents[0].hexsha

    def _sync_worktree(self, check: bool = False) -> None:
        """Make the work tree and index equal to HEAD's commit (the last commit made)."""
        try:
            self.repo.git.rev_parse("--verify", "-q", "HEAD^{commit}")
        except git.exc.GitCommandError:
            return  # no commit yet
        if check:
            status = self.repo.git.status("--porcelain", "--untracked-files=all", "--ignored=no")
            if not status.strip():
                return
            log.warning("lineage: work tree of %s differed from HEAD; reset (it mirrors the last commit, do not edit it)", self.path)
        self.repo.git.reset("--hard", "-q", "HEAD")
        if check:
            self.repo.git.clean("-fdq")

    # ------------------------------------------------------------------ refs and objects

    def _refs(self, prefix: str) -> dict[str, str]:
        """{full ref name: commit sha} under `prefix` (one `git for-each-ref`)."""
        out = self.repo.git.for_each_ref("--format=%(refname) %(objectname)", prefix)
        refs = {}
        for line in out.splitlines():
            name, _, sha = line.strip().partition(" ")
            if name:
                refs[name] = sha
        return refs

    def _ref_sha(self, ref: str) -> Optional[str]:
        try:
            return self.repo.git.rev_parse("--verify", "-q", f"{ref}^{{commit}}")
        except git.exc.GitCommandError:
            return None

    def _store(self, kind: str, data: bytes) -> bytes:
        return self.repo.odb.store(IStream(kind, len(data), BytesIO(data))).binsha

    def _program_files(self, program_dir: Path) -> dict[str, tuple[bytes, bytes]]:
        """{posix relative path: (mode, content)} of a program directory, skipping caches and `.avo/`."""
        program_dir = Path(program_dir)
        if not program_dir.is_dir():
            raise LineageError(f"program directory {program_dir} does not exist or is not a directory")
        files: dict[str, tuple[bytes, bytes]] = {}
        for root, dirs, names in os.walk(program_dir):
            rel_root = os.path.relpath(root, program_dir)
            rel_root = "" if rel_root == "." else rel_root.replace(os.sep, "/") + "/"
            keep = []
            for d in sorted(dirs):
                full = os.path.join(root, d)
                if d in SKIP_DIRS or (not rel_root and d == META_DIR):
                    continue
                if os.path.islink(full):
                    names.append(d)  # a symlink to a directory is stored as a link
                else:
                    keep.append(d)
            dirs[:] = keep
            for name in names:
                if name in SKIP_DIRS or name.endswith(SKIP_SUFFIXES):
                    continue
                full = os.path.join(root, name)
                st = os.lstat(full)
                if stat.S_ISLNK(st.st_mode):
                    files[rel_root + name] = (_MODE_LINK, os.fsencode(os.readlink(full)))
                elif stat.S_ISREG(st.st_mode):
                    with open(full, "rb") as f:
                        data = f.read()
                    files[rel_root + name] = (_MODE_EXEC if st.st_mode & 0o111 else _MODE_FILE, data)
        return files

    def _write_tree(self, files: dict[str, tuple[bytes, bytes]]) -> str:
        """Write blobs and (nested) trees for `files`; return the root tree's hex sha."""
        root: dict = {}
        for path, (mode, data) in files.items():
            node = root
            parts = path.split("/")
            for part in parts[:-1]:
                node = node.setdefault(part, {})
                if not isinstance(node, dict):
                    raise LineageError(f"path conflict at {path!r}")
            node[parts[-1]] = (mode, self._store("blob", data))

        def write(node: dict) -> bytes:
            entries = []
            for name, val in node.items():
                bname = os.fsencode(name)
                if isinstance(val, dict):
                    entries.append((bname + b"/", _MODE_TREE, bname, write(val)))
                else:
                    entries.append((bname, val[0], bname, val[1]))
            entries.sort(key=lambda e: e[0])  # git's order: a directory sorts as if named "<name>/"
            return self._store("tree", b"".join(m + b" " + n + b"\0" + sha for _, m, n, sha in entries))

        return write(root).hex()

    def _write_commit(self, tree: str, parents: list[str], message: str, when: int) -> str:
        ident = f"{AUTHOR_NAME} <{AUTHOR_EMAIL}> {when} +0000"
        lines = [f"tree {tree}"] + [f"parent {p}" for p in parents]
        lines += [f"author {ident}", f"committer {ident}", "", message.rstrip("\n") + "\n"]
        return self._store("commit", "\n".join(lines).encode("utf-8")).hex()

    def _read(self, sha: str, path: str) -> Optional[bytes]:
        try:
            return (self.repo.commit(sha).tree / path).data_stream.read()
        except KeyError:
            return None

    def _materialize(self, sha: str, dest: Path) -> Path:
        """Write the program tree of commit `sha` (without `.avo/`) into an empty or missing `dest`."""
        dest = _check_dest(dest)
        for item in self.repo.commit(sha).tree.traverse():
            if item.path == META_DIR or item.path.startswith(META_DIR + "/"):
                continue
            target = dest / item.path
            if item.type == "tree":
                target.mkdir(parents=True, exist_ok=True)
            elif item.type == "blob":
                target.parent.mkdir(parents=True, exist_ok=True)
                data = item.data_stream.read()
                if item.mode == stat.S_IFLNK:
                    os.symlink(os.fsdecode(data), target)
                else:
                    target.write_bytes(data)
                    if item.mode & 0o111:
                        target.chmod(0o755)
        return dest

    # ------------------------------------------------------------------ versions

    def _version(self, branch: str, number: int, sha: str) -> Version:
        if sha not in self._cache:
            commit = self.repo.commit(sha)
            raw = self._read(sha, SCORE_FILE)
            try:
                result = json.loads(raw) if raw else {}
            except json.JSONDecodeError:
                log.warning("lineage: %s of %s is not valid JSON", SCORE_FILE, sha[:10])
                result = {}
            notes = (self._read(sha, NOTES_FILE) or b"").decode("utf-8", "replace")
            msg = commit.message
            parent = _PARENT_TRAILER_RE.findall(msg)
            self._cache[sha] = (result, notes, _operator_message(msg), parent[-1] if parent else None, float(commit.committed_date))
        result, notes, message, parent, ts = self._cache[sha]
        return Version(branch, number, sha, f"{branch}/v{number}", dict(result), notes, message, ts, parent)

    def _version_refs(self, branch: Optional[str] = None) -> list[tuple[str, int, str]]:
        """[(branch, number, sha)] from the tags, for one branch or all."""
        out = []
        prefix = f"refs/tags/{branch}/" if branch else "refs/tags/"
        for ref, sha in self._refs(prefix).items():
            m = re.fullmatch(r"refs/tags/(.+)/v(\d+)", ref)
            if m and (branch is None or m.group(1) == branch):
                out.append((m.group(1), int(m.group(2)), sha))
        out.sort(key=lambda t: (_natural_key(t[0]), t[1]))
        return out

    def versions(self, branch: str = "main") -> list[Version]:
        """The tagged versions of `branch`, sorted by number."""
        return [self._version(b, n, s) for b, n, s in self._version_refs(branch)]

    def latest(self, branch: str = "main") -> Optional[Version]:
        vs = self.versions(branch)
        return vs[-1] if vs else None

    def best(self, branch: str = "main") -> Optional[Version]:
        """The correct version with the highest lineage score; on a tie the earlier one (it came first)."""
        best = None
        for v in self.versions(branch):
            if v.correct and (best is None or v.lineage_score > best.lineage_score):
                best = v
        return best

    def branches(self) -> list[str]:
        return sorted((r.removeprefix("refs/heads/") for r in self._refs("refs/heads/")), key=_natural_key)

    def resolve(self, ref: str, branch: str = "main") -> Version:
        """A version from "best", "latest", "vN", "<branch>/vN" or a (short, >= 4 hex digits) commit sha."""
        ref = str(ref).strip()
        if ref in ("best", "latest"):
            v = self.best(branch) if ref == "best" else self.latest(branch)
            if v is None:
                what = "correct versions" if ref == "best" else "versions"
                raise LineageError(f"branch {branch!r} has no {what}; branches: {self.branches() or 'none yet'}")
            return v
        m = re.fullmatch(r"(?:(.+)/)?v(\d+)", ref)
        if m:
            b, n = m.group(1) or branch, int(m.group(2))
            for v in self.versions(b):
                if v.number == n:
                    return v
            raise LineageError(self._unknown(ref, b))
        if re.fullmatch(r"[0-9a-fA-F]{4,40}", ref):
            ref_l = ref.lower()
            hits = [(b, n, s) for b, n, s in self._version_refs() if s.startswith(ref_l)]
            if len({s for _, _, s in hits}) == 1:
                # Prefer the requested branch if the commit carries tags on several.
                b, n, s = next((h for h in hits if h[0] == branch), hits[0])
                return self._version(b, n, s)
            if hits:
                raise LineageError(f"sha prefix {ref!r} is ambiguous: {', '.join(f'{b}/v{n} ({s[:12]})' for b, n, s in hits)}")
        raise LineageError(self._unknown(ref, branch))

    def _unknown(self, ref: str, branch: str) -> str:
        vs = self._version_refs(branch)
        have = f"v{vs[0][1]}..v{vs[-1][1]}" if vs else "none yet"
        return (
            f"unknown version {ref!r} on branch {branch!r}. Valid refs: 'best', 'latest', 'vN' (branch {branch!r} has {have}), "
            f"'<branch>/vN' with branch in {self.branches() or 'none yet'}, or a sha prefix (>= 4 hex digits) of a version commit"
        )

    # ------------------------------------------------------------------ writing versions

    def commit(
        self,
        program_dir: Path,
        result: dict,
        *,
        notes: str = "",
        message: str = "",
        branch: str = "main",
        parent: Optional[Version] = None,
    ) -> Version:
        """Commit `program_dir` + `.avo/{score.json,notes.md}` as the next version of `branch` and tag it.

        The branch is created if missing: from `parent`'s commit if given, else as a root commit. On an
        existing branch the git parent is the branch head; `parent` (the version the program was derived
        from, possibly older or on another branch) is recorded as the `Avo-Parent` trailer.
        """
        if not _BRANCH_RE.fullmatch(branch):
            raise LineageError(f"branch name {branch!r} is not allowed: use letters, digits, '.', '_', '-' (e.g. 'main', 'island-1')")
        if not isinstance(result, dict):
            raise LineageError(f"result must be the evaluator's result dict, got {type(result).__name__}")
        score_json = json.dumps(result, indent=2, sort_keys=True, default=str) + "\n"
        files = self._program_files(program_dir)
        files[SCORE_FILE] = (_MODE_FILE, score_json.encode("utf-8"))
        files[NOTES_FILE] = (_MODE_FILE, notes.encode("utf-8"))
        with self._locked(), self._disk_guard(f"committing the next version of {branch}"):
            head = self._ref_sha(f"refs/heads/{branch}")
            if head is not None:
                self._tag_untagged(branch, head)
            numbers = [n for _, n, _ in self._version_refs(branch)]
            number = max(numbers) + 1 if numbers else 0
            tag = f"{branch}/v{number}"
            if self._ref_sha(f"refs/tags/{tag}") is not None:
                raise LineageError(f"tag {tag} already exists; the lineage at {self.path} is inconsistent")
            git_parents = [head] if head else ([parent.sha] if parent is not None else [])
            msg = _commit_message(number, tag, result, message, parent.tag if parent is not None else None)
            sha = self._write_commit(self._write_tree(files), git_parents, msg, int(time.time()))
            # Compare-and-swap: fails (instead of losing a commit) if the branch moved under us.
            self.repo.git.update_ref("-m", f"avo: {tag}", f"refs/heads/{branch}", sha, head or _ZERO_SHA)
            self.repo.git.update_ref("-m", f"avo: {tag}", f"refs/tags/{tag}", sha, _ZERO_SHA)
            self.repo.git.symbolic_ref("HEAD", f"refs/heads/{branch}")
            self._sync_worktree()
        return self._version(branch, number, sha)

    # ------------------------------------------------------------------ reading versions

    def export(self, version: Version, dest: Path) -> Path:
        """Write `version`'s program tree (without `.avo/`) into `dest` (created; must be empty or absent)."""
        return self._materialize(version.sha, dest)

    def files(self, version: Version) -> list[str]:
        """The program's file paths in `version` (without `.avo/`)."""
        return sorted(
            i.path for i in self.repo.commit(version.sha).tree.traverse()
            if i.type == "blob" and not i.path.startswith(META_DIR + "/")
        )

    def read_file(self, version: Version, path: str) -> str:
        """One file of `version` as text (for agents' "show" tools)."""
        data = self._read(version.sha, path)
        if data is None:
            raise LineageError(f"{version.tag} has no file {path!r}; files: {self.files(version)}")
        return data.decode("utf-8", "replace")

    def diff(self, a: Union[Version, str], b: Union[Version, str]) -> str:
        """Unified diff of the program files (not `.avo/`) from `a` to `b` (versions or commit shas)."""
        sa = a.sha if isinstance(a, Version) else a
        sb = b.sha if isinstance(b, Version) else b
        return self.repo.git.diff(
            "--no-color", "--no-ext-diff", "--src-prefix=a/", "--dst-prefix=b/", sa, sb, "--", ".", f":(exclude){META_DIR}",
            strip_newline_in_stdout=False,
        )

    # ------------------------------------------------------------------ worktrees (agent workspaces)

    def add_worktree(self, version: Version, dest: Path) -> Path:
        """A git worktree of `version` at `dest` (detached HEAD), e.g. as an agent's workspace.

        It contains the version's `.avo/` too (read-only information; `commit` ignores a program's `.avo/`).
        """
        dest = Path(dest)
        if dest.exists() and any(dest.iterdir()):
            raise LineageError(f"worktree destination {dest} is not empty")
        with self._locked():
            self.repo.git.worktree("add", "--detach", "-f", str(dest), version.sha)
        return dest

    def remove_worktree(self, dest: Path) -> None:
        with self._locked():
            self.repo.git.worktree("remove", "--force", str(dest))

    # ------------------------------------------------------------------ attempts

    def _attempt_numbers(self) -> list[int]:
        nums = []
        for ref in self._refs(ATTEMPT_REF_PREFIX):
            tail = ref[len(ATTEMPT_REF_PREFIX):]
            if tail.isdigit():
                nums.append(int(tail))
        nums += [a["n"] for a in self.attempts() if isinstance(a.get("n"), int)]
        return nums

    def record_attempt(self, program_dir: Optional[Path], record: dict, *, parent: Optional[Version] = None) -> dict:
        """Keep an attempt's tree under refs/attempts/<n> and append its record to attempts.jsonl.

        n is one more than the highest number seen in refs/attempts/* and attempts.jsonl, so a restart
        after a crash never reuses one. No branch, index or work tree is touched. The stored line is the
        record plus {"n", "sha", "timestamp"} (and "parent": the parent version's tag, unless the record
        has one); it is returned as read back from JSON. `program_dir=None` (no program was produced, e.g. the
        model's reply could not be parsed) keeps an empty program tree.
        """
        if not isinstance(record, dict):
            raise LineageError(f"attempt record must be a dict, got {type(record).__name__}")
        files = self._program_files(program_dir) if program_dir is not None else {}
        if "result" in record:
            files[SCORE_FILE] = (_MODE_FILE, (json.dumps(record["result"], indent=2, sort_keys=True, default=str) + "\n").encode())
        if record.get("notes"):
            files[NOTES_FILE] = (_MODE_FILE, str(record["notes"]).encode("utf-8"))
        with self._locked(), self._disk_guard("recording an attempt"):
            n = max(self._attempt_numbers(), default=0) + 1
            now = time.time()
            result = record.get("result") if isinstance(record.get("result"), dict) else None
            summary = f"attempt {n}" + (f": {_score_summary(result)}" if result is not None else "")
            trailers = [f"Avo-Attempt: {n}"] + ([f"Avo-Parent: {parent.tag}"] if parent is not None else [])
            msg = summary + "\n\n" + "\n".join(trailers)
            sha = self._write_commit(self._write_tree(files), [parent.sha] if parent is not None else [], msg, int(now))
            line = dict(record)
            if parent is not None:
                line.setdefault("parent", parent.tag)
            line.update(n=n, sha=sha, timestamp=now)
            text = json.dumps(line, default=str)  # serialise before any ref exists: a bad record fails early
            self.repo.git.update_ref("-m", f"avo: attempt {n}", f"{ATTEMPT_REF_PREFIX}{n}", sha, _ZERO_SHA)
            self._append_line(text)
        return json.loads(text)

    def _append_line(self, text: str) -> None:
        with open(self.attempts_path, "a+b") as f:
            f.seek(0, os.SEEK_END)
            prefix = b""
            if f.tell() > 0:
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":
                    prefix = b"\n"  # a crash left a partial line: start a fresh one (the partial is skipped on read)
            f.write(prefix + text.encode("utf-8") + b"\n")
            f.flush()
            os.fsync(f.fileno())

    def attempts(self) -> list[dict]:
        """The records of attempts.jsonl, in order; corrupt lines (a crash mid-write) are skipped with a warning."""
        try:
            raw = self.attempts_path.read_bytes()
        except FileNotFoundError:
            return []
        out = []
        for i, line in enumerate(raw.split(b"\n"), 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError):
                if line in self._warned:
                    continue
                self._warned.add(line)
                log.warning("lineage: skipping corrupt line %d of %s (interrupted write?): %r", i, self.attempts_path, line[:80])
                continue
            if isinstance(rec, dict):
                out.append(rec)
            else:
                log.warning("lineage: skipping line %d of %s: not a JSON object", i, self.attempts_path)
        return out

    def attempt_sha(self, n: int) -> str:
        sha = self._ref_sha(f"{ATTEMPT_REF_PREFIX}{int(n)}")
        if sha is None:
            nums = sorted(self._attempt_numbers())
            have = f"{nums[0]}..{nums[-1]}" if nums else "none yet"
            raise LineageError(f"no attempt {n} in {self.path} (attempts: {have})")
        return sha

    def attempt_tree(self, n: int, dest: Path) -> Path:
        """Restore attempt n's program tree (without `.avo/`) into `dest` (created; must be empty or absent)."""
        return self._materialize(self.attempt_sha(n), dest)


def _commit_message(number: int, tag: str, result: dict, message: str, parent_tag: Optional[str]) -> str:
    message = (message or "").strip()
    first = message.splitlines()[0] if message else ""
    if len(first) > 72:
        first = first[:69] + "..."
    summary = f"v{number}: {_score_summary(result)}" + (f" {first}" if first else "")
    score_block = [f"{_SCORE_HEADER}{_score_summary(result)} aggregate"] + _config_lines(result)
    trailers = [f"Avo-Version: {tag}"] + ([f"Avo-Parent: {parent_tag}"] if parent_tag else [])
    parts = [summary] + ([message] if message else []) + ["\n".join(score_block), "\n".join(trailers)]
    return "\n\n".join(parts) + "\n"


def _operator_message(commit_message: str) -> str:
    """The operator's message back out of a version commit message (inverse of `_commit_message`)."""
    _, _, rest = commit_message.partition("\n\n")
    if rest.startswith(_SCORE_HEADER):
        return ""
    idx = rest.rfind("\n\n" + _SCORE_HEADER)
    return rest[:idx] if idx >= 0 else rest.strip()

"""Tests of the lineage store (avo/lineage.py).

The repository is inspected with the plain git command line, not through the module, so that a test checks
what is really stored (tags, refs, trees, the work tree) rather than the module's own view of it.
"""
from __future__ import annotations

import json
import logging
import os
import subprocess
import threading
from pathlib import Path

import pytest

from avo.lineage import Lineage, LineageError


@pytest.fixture(autouse=True)
def no_git_identity(tmp_path, monkeypatch):
    """CI machines have no git identity or global config: the store must not need one."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(home / "nonexistent.gitconfig"))
    for var in ("GIT_AUTHOR_NAME", "GIT_AUTHOR_EMAIL", "GIT_COMMITTER_NAME", "GIT_COMMITTER_EMAIL", "EMAIL"):
        monkeypatch.delenv(var, raising=False)


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout.strip()


def write_program(d: Path, files: dict[str, str]) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    for rel, text in files.items():
        p = d / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return d


def tree_of(d: Path) -> dict[str, str]:
    """{relative path: content} of every file under d (what a program directory holds), .git/ left out."""
    return {
        p.relative_to(d).as_posix(): p.read_text()
        for p in sorted(d.rglob("*"))
        if p.is_file() and p.relative_to(d).parts[0] != ".git"
    }


def result(score: float, correct: bool = True) -> dict:
    return {
        "score": score,
        "correct": correct,
        "stage": "timing" if correct else "correctness",
        "configs": [
            {"label": "B32_S1024_H16/16_D128", "tflops": score * 0.9},
            {"label": "B1_S32768_H16/16_D128", "tflops": score * 1.1},
        ],
    }


@pytest.fixture
def run_dir(tmp_path) -> Path:
    return tmp_path / "run"


@pytest.fixture
def lin(run_dir):
    lineage = Lineage(run_dir)
    yield lineage
    lineage.close()


def test_seed_commit_is_v0_with_tag_and_score(lin, run_dir, tmp_path):
    """The seed becomes main/v0: a tagged commit holding the program, .avo/score.json and .avo/notes.md."""
    prog = write_program(tmp_path / "p", {"kernel.py": "def attention(): pass\n"})
    v = lin.commit(prog, result(100.0), notes="the seed", message="seed program\n\nfrom seeds/")
    repo = run_dir / "lineage"
    assert (v.branch, v.number, v.tag) == ("main", 0, "main/v0")
    assert git(repo, "rev-parse", "refs/tags/main/v0^{commit}") == v.sha
    assert git(repo, "rev-parse", "refs/heads/main") == v.sha
    assert json.loads(git(repo, "show", f"{v.sha}:.avo/score.json")) == result(100.0)
    assert git(repo, "show", f"{v.sha}:.avo/notes.md") == "the seed"
    assert git(repo, "show", f"{v.sha}:kernel.py") == "def attention(): pass"
    assert git(repo, "rev-list", "--count", v.sha) == "1"  # a root commit
    assert git(repo, "log", "-1", "--format=%an <%ae>", v.sha) == "avo <avo@localhost>"
    subject = git(repo, "log", "-1", "--format=%s", v.sha)
    assert subject == "v0: 100.0 TFLOPS (correct) seed program"
    body = git(repo, "log", "-1", "--format=%B", v.sha)
    assert "B1_S32768_H16/16_D128: 110.0 TFLOPS" in body and "Avo-Version: main/v0" in body
    assert v.result == result(100.0) and v.score == 100.0 and v.notes == "the seed"
    assert v.message == "seed program\n\nfrom seeds/"
    # The work tree mirrors the last commit.
    assert tree_of(repo) == {
        "kernel.py": "def attention(): pass\n",
        ".avo/score.json": (repo / ".avo/score.json").read_text(),
        ".avo/notes.md": "the seed",
    }
    assert git(repo, "status", "--porcelain") == ""


def test_versions_round_trip(lin, run_dir, tmp_path):
    """versions/latest/best/resolve/export/diff agree with what was committed."""
    scores = [(100.0, True), (150.0, True), (150.0, True), (300.0, False)]
    committed = []
    for i, (s, ok) in enumerate(scores):
        prog = write_program(tmp_path / f"p{i}", {"kernel.py": f"BLOCK = {i}\n", "README": "same\n"})
        committed.append(lin.commit(prog, result(s, ok), message=f"step {i}", notes=f"n{i}"))
    vs = lin.versions()
    assert [v.number for v in vs] == [0, 1, 2, 3]
    assert [v.sha for v in vs] == [c.sha for c in committed]
    assert [v.message for v in vs] == ["step 0", "step 1", "step 2", "step 3"]
    assert lin.latest().number == 3
    assert lin.best().number == 1  # v3 is faster but incorrect; v2 ties v1 and came later
    assert lin.resolve("best").number == 1
    assert lin.resolve("latest").number == 3
    assert lin.resolve("v2").sha == committed[2].sha
    assert lin.resolve("main/v2").sha == committed[2].sha
    assert lin.resolve(committed[2].sha).number == 2
    assert lin.resolve(committed[2].sha[:8]).number == 2
    for bad in ("v9", "other/v0", "deadbeef", "nonsense"):
        with pytest.raises(LineageError, match="Valid refs: 'best', 'latest'"):
            lin.resolve(bad)
    out = lin.export(lin.resolve("v1"), tmp_path / "out")
    assert tree_of(out) == {"kernel.py": "BLOCK = 1\n", "README": "same\n"}
    d = lin.diff(committed[0], committed[2])
    assert "-BLOCK = 0" in d and "+BLOCK = 2" in d
    assert ".avo" not in d and "README" not in d
    assert lin.diff(committed[1], committed[1]) == ""
    assert git(run_dir / "lineage", "log", "--format=%s", "-1") == "v3: 300.0 TFLOPS (incorrect) step 3"


def test_best_and_latest_of_empty_or_all_incorrect(lin, tmp_path):
    """An empty branch has no latest; a branch of failures has no best, and resolve says why."""
    assert lin.latest() is None and lin.best() is None and lin.versions() == []
    with pytest.raises(LineageError, match="no versions"):
        lin.resolve("latest")
    lin.commit(write_program(tmp_path / "p", {"kernel.py": "x\n"}), result(0.0, False))
    assert lin.latest().number == 0 and lin.best() is None
    with pytest.raises(LineageError, match="no correct versions"):
        lin.resolve("best")


def test_best_is_ranked_by_lineage_score_when_recorded(lin, tmp_path):
    """A version judged alongside its incumbent carries `lineage_score`; that, not the raw score, ranks it."""
    lin.commit(write_program(tmp_path / "a", {"kernel.py": "a\n"}), result(10.0))
    lin.commit(write_program(tmp_path / "b", {"kernel.py": "b\n"}), {**result(9.5), "lineage_score": 10.4})
    lin.commit(write_program(tmp_path / "c", {"kernel.py": "c\n"}), {**result(10.2), "lineage_score": 10.1})
    best = lin.best()
    assert best.number == 1 and best.score == 9.5 and best.lineage_score == 10.4
    assert lin.resolve("best").number == 1 and lin.versions()[0].lineage_score == 10.0


def test_deleted_files_disappear(lin, run_dir, tmp_path):
    """A file removed from the program is removed in the next version and from the work tree."""
    v0 = lin.commit(write_program(tmp_path / "a", {"kernel.py": "k\n", "helper.py": "h\n"}), result(1.0))
    v1 = lin.commit(write_program(tmp_path / "b", {"kernel.py": "k2\n"}), result(2.0))
    repo = run_dir / "lineage"
    assert git(repo, "ls-tree", "-r", "--name-only", v1.sha).split() == [".avo/notes.md", ".avo/score.json", "kernel.py"]
    assert not (repo / "helper.py").exists()
    assert tree_of(lin.export(v1, tmp_path / "out")) == {"kernel.py": "k2\n"}
    assert "deleted file mode" in lin.diff(v0, v1) and "helper.py" in lin.diff(v0, v1)
    assert lin.files(v0) == ["helper.py", "kernel.py"] and lin.files(v1) == ["kernel.py"]


def test_program_with_subdirectories_modes_and_junk(lin, run_dir, tmp_path):
    """The genome is a tree: subdirectories and the executable bit survive; caches and .avo/ do not enter."""
    prog = write_program(
        tmp_path / "p",
        {
            "kernel.py": "import csrc\n",
            "csrc/attn.cu": "__global__ void k() {}\n",
            "csrc/include/util.h": "#pragma once\n",
            "build.sh": "#!/bin/sh\necho hi\n",
            "__pycache__/kernel.cpython-312.pyc": "junk",
            "csrc/__pycache__/x.pyc": "junk",
            "stray.pyc": "junk",
            ".avo/score.json": '{"score": 999}',  # a workspace's copy of the parent's metadata
            ".avo/scratch.txt": "not part of the program",
        },
    )
    (prog / "build.sh").chmod(0o755)
    v = lin.commit(prog, result(5.0))
    repo = run_dir / "lineage"
    assert git(repo, "ls-tree", "-r", "--name-only", v.sha).split() == [
        ".avo/notes.md", ".avo/score.json", "build.sh", "csrc/attn.cu", "csrc/include/util.h", "kernel.py",
    ]
    assert git(repo, "ls-tree", v.sha, "build.sh").split()[0] == "100755"
    assert v.score == 5.0  # the program's own .avo/score.json was not taken
    out = lin.export(v, tmp_path / "out")
    assert tree_of(out) == {
        "kernel.py": "import csrc\n",
        "csrc/attn.cu": "__global__ void k() {}\n",
        "csrc/include/util.h": "#pragma once\n",
        "build.sh": "#!/bin/sh\necho hi\n",
    }
    assert os.access(out / "build.sh", os.X_OK) and not os.access(out / "kernel.py", os.X_OK)
    assert lin.read_file(v, "csrc/include/util.h") == "#pragma once\n"
    with pytest.raises(LineageError, match="not empty"):
        lin.export(v, out)


def test_two_branches(lin, run_dir, tmp_path):
    """An island branch starts from a parent version of main and numbers its own versions from 0."""
    m0 = lin.commit(write_program(tmp_path / "m0", {"kernel.py": "m0\n"}), result(10.0))
    m1 = lin.commit(write_program(tmp_path / "m1", {"kernel.py": "m1\n"}), result(20.0))
    i0 = lin.commit(write_program(tmp_path / "i0", {"kernel.py": "i0\n"}), result(25.0), branch="island-1", parent=m1)
    i1 = lin.commit(write_program(tmp_path / "i1", {"kernel.py": "i1\n"}), result(30.0), branch="island-1")
    repo = run_dir / "lineage"
    assert (i0.tag, i1.tag) == ("island-1/v0", "island-1/v1")
    assert git(repo, "rev-parse", f"{i0.sha}^") == m1.sha  # branched from the parent's commit
    assert i0.parent == "main/v1" and i1.parent is None
    assert lin.branches() == ["island-1", "main"]
    assert [v.number for v in lin.versions("main")] == [0, 1]
    assert [v.number for v in lin.versions("island-1")] == [0, 1]
    assert git(repo, "rev-parse", "refs/heads/main") == m1.sha
    assert lin.best("island-1").sha == i1.sha and lin.best().sha == m1.sha
    assert lin.resolve("island-1/v0").sha == i0.sha
    assert lin.resolve("v0", branch="island-1").sha == i0.sha
    assert lin.resolve("v0").sha == m0.sha
    # The work tree follows the branch of the last commit, and back.
    assert git(repo, "symbolic-ref", "HEAD") == "refs/heads/island-1" and (repo / "kernel.py").read_text() == "i1\n"
    m2 = lin.commit(write_program(tmp_path / "m2", {"kernel.py": "m2\n", "extra.py": "e\n"}), result(40.0), parent=i1)
    assert git(repo, "rev-parse", f"{m2.sha}^") == m1.sha  # on an existing branch the git parent is its head
    assert m2.parent == "island-1/v1" and (repo / "kernel.py").read_text() == "m2\n"
    # A branch created without a parent is a root commit.
    r0 = lin.commit(write_program(tmp_path / "r0", {"kernel.py": "r\n"}), result(1.0), branch="island-2")
    assert git(repo, "rev-list", "--count", r0.sha) == "1"
    assert git(repo, "status", "--porcelain") == "" and not (repo / "extra.py").exists()
    with pytest.raises(LineageError, match="branch name"):
        lin.commit(tmp_path / "r0", result(1.0), branch="bad/name")


def test_attempts_are_kept_without_touching_branches(lin, run_dir, tmp_path):
    """record_attempt numbers attempts, keeps their trees under refs/attempts/<n>, and leaves the branch,
    index and work tree alone."""
    repo = run_dir / "lineage"
    v0 = lin.commit(write_program(tmp_path / "seed", {"kernel.py": "seed\n"}), result(10.0))
    state = lambda: (git(repo, "rev-parse", "HEAD"), git(repo, "symbolic-ref", "HEAD"),
                     git(repo, "ls-files", "-s"), git(repo, "status", "--porcelain", "--untracked-files=all"), tree_of(repo))
    before = state()
    prog = write_program(tmp_path / "a1", {"kernel.py": "try 1\n", "sub/x.py": "x\n"})
    rec1 = lin.record_attempt(prog, {"outcome": "rejected", "result": result(5.0, False)}, parent=v0)
    prog2 = write_program(tmp_path / "a2", {"kernel.py": "try 2\n"})
    rec2 = lin.record_attempt(prog2, {"outcome": "compile_error", "error": "boom"})
    assert state() == before
    assert (rec1["n"], rec2["n"]) == (1, 2)
    assert rec1["outcome"] == "rejected" and rec1["parent"] == "main/v0" and isinstance(rec1["timestamp"], float)
    assert git(repo, "rev-parse", "refs/attempts/1") == rec1["sha"]
    assert git(repo, "rev-parse", "refs/attempts/2") == rec2["sha"]
    assert git(repo, "rev-parse", f"{rec1['sha']}^") == v0.sha
    assert json.loads(git(repo, "show", f"{rec1['sha']}:.avo/score.json"))["correct"] is False
    assert ".avo/score.json" not in git(repo, "ls-tree", "-r", "--name-only", rec2["sha"])
    assert git(repo, "branch", "--contains", rec1["sha"]) == ""  # no branch reaches an attempt
    assert tree_of(lin.attempt_tree(1, tmp_path / "r1")) == {"kernel.py": "try 1\n", "sub/x.py": "x\n"}
    assert tree_of(lin.attempt_tree(2, tmp_path / "r2")) == {"kernel.py": "try 2\n"}
    lines = [json.loads(line) for line in (run_dir / "attempts.jsonl").read_text().splitlines()]
    assert lines == [rec1, rec2] == lin.attempts()
    assert "+try 2" in lin.diff(v0, rec2["sha"])
    with pytest.raises(LineageError, match=r"attempts: 1\.\.2"):
        lin.attempt_tree(7, tmp_path / "r7")


def test_reopen_sees_everything(run_dir, tmp_path):
    """A restarted run on the same directory sees its versions and attempts and keeps numbering."""
    with Lineage(run_dir) as lin:
        v0 = lin.commit(write_program(tmp_path / "p0", {"kernel.py": "0\n"}), result(1.0), notes="n0", message="m0")
        lin.commit(write_program(tmp_path / "p1", {"kernel.py": "1\n"}), result(2.0), branch="island-1", parent=v0)
        rec = lin.record_attempt(tmp_path / "p0", {"outcome": "ok"}, parent=v0)
    with Lineage(run_dir) as lin:
        assert [v.tag for v in lin.versions()] == ["main/v0"]
        again = lin.versions()[0]
        assert (again.sha, again.result, again.notes, again.message) == (v0.sha, v0.result, "n0", "m0")
        assert lin.branches() == ["island-1", "main"] and lin.latest("island-1").parent == "main/v0"
        assert lin.attempts() == [rec]
        assert lin.record_attempt(tmp_path / "p1", {"outcome": "ok"})["n"] == 2
        assert lin.commit(tmp_path / "p1", result(3.0)).tag == "main/v1"


def test_corrupt_last_attempt_line_is_tolerated(lin, run_dir, tmp_path, caplog):
    """A crash mid-append leaves a partial last line: it is skipped with a warning, the attempt's line is
    recovered from its ref on reopen, and its number is not reused."""
    prog = write_program(tmp_path / "p", {"kernel.py": "k\n"})
    for _ in range(3):
        lin.record_attempt(prog, {"outcome": "x", "result": {"score": 2.5, "correct": True}})
    path = run_dir / "attempts.jsonl"
    data = path.read_bytes()
    path.write_bytes(data[: data.rstrip(b"\n").rfind(b"\n") + 1 + 12])  # cut the third line after 12 bytes
    with caplog.at_level(logging.WARNING, logger="avo.lineage"):
        recovered = Lineage(run_dir).attempts()
    assert [a["n"] for a in recovered] == [1, 2, 3]
    assert recovered[2]["outcome"] == "interrupted" and recovered[2]["recovered"] and recovered[2]["score"] == 2.5
    assert "corrupt line 3" in caplog.text and "recovered from git" in caplog.text
    rec = lin.record_attempt(prog, {"outcome": "after crash"})
    assert rec["n"] == 4  # refs/attempts/3 exists, so 3 is not reused
    assert [a["n"] for a in lin.attempts()] == [1, 2, 3, 4]
    assert path.read_text().splitlines()[-1] == json.dumps(rec)  # the new record starts on its own line


def test_attempt_numbers_follow_jsonl_when_refs_are_missing(lin, run_dir, tmp_path):
    """Numbers come from both sources: lines from a store whose refs were lost still reserve their numbers."""
    (run_dir / "attempts.jsonl").write_text(json.dumps({"n": 41, "sha": "0" * 40, "timestamp": 0.0}) + "\n")
    assert lin.record_attempt(write_program(tmp_path / "p", {"kernel.py": "k\n"}), {})["n"] == 42
    empty = lin.record_attempt(None, {"outcome": "no program in the reply"})  # nothing to keep but the record
    assert empty["n"] == 43 and tree_of(lin.attempt_tree(43, tmp_path / "r")) == {}


def test_untagged_head_is_recovered(run_dir, tmp_path):
    """A crash between commit and tag leaves an untagged version at the branch head: reopening tags it, and so
    does the next commit of a live store, so the version is neither lost nor its number reused."""
    repo = run_dir / "lineage"
    with Lineage(run_dir) as lin:
        lin.commit(write_program(tmp_path / "p0", {"kernel.py": "0\n"}), result(1.0))
        v1 = lin.commit(write_program(tmp_path / "p1", {"kernel.py": "1\n"}), result(2.0))
    git(repo, "update-ref", "-d", "refs/tags/main/v1")  # the state a crash before tagging leaves
    (repo / "kernel.py").write_text("half-written\n")  # and a work tree that was not synced
    with Lineage(run_dir) as lin:
        assert git(repo, "rev-parse", "refs/tags/main/v1") == v1.sha
        assert [v.number for v in lin.versions()] == [0, 1]
        assert (repo / "kernel.py").read_text() == "1\n" and git(repo, "status", "--porcelain") == ""
        git(repo, "update-ref", "-d", "refs/tags/main/v1")
        v2 = lin.commit(write_program(tmp_path / "p2", {"kernel.py": "2\n"}), result(3.0))
        assert v2.number == 2 and git(repo, "rev-parse", "refs/tags/main/v1") == v1.sha


def test_stale_git_lock_is_removed_on_reopen(run_dir, tmp_path):
    """A process killed inside git leaves a .lock file that would block every later ref update."""
    with Lineage(run_dir) as lin:
        lin.commit(write_program(tmp_path / "p0", {"kernel.py": "0\n"}), result(1.0))
    (run_dir / "lineage/.git/refs/heads/main.lock").write_text("")
    with Lineage(run_dir) as lin:
        assert lin.commit(tmp_path / "p0", result(2.0)).number == 1


def test_reopen_refuses_a_foreign_directory(run_dir):
    """A non-empty lineage/ that is not a repository is somebody's data: refuse rather than init over it."""
    (run_dir / "lineage").mkdir(parents=True)
    (run_dir / "lineage" / "file").write_text("x")
    with pytest.raises(LineageError, match="not a git repository"):
        Lineage(run_dir)


def test_concurrent_writers_get_distinct_attempt_numbers(run_dir, tmp_path):
    """Islands may record attempts from several workers at once: the lock keeps numbers unique."""
    prog = write_program(tmp_path / "p", {"kernel.py": "k\n"})
    Lineage(run_dir).close()
    got: list[int] = []

    def worker():
        with Lineage(run_dir) as lin:
            for _ in range(5):
                got.append(lin.record_attempt(prog, {})["n"])

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(got) == list(range(1, 16))
    assert sorted(a["n"] for a in Lineage(run_dir).attempts()) == list(range(1, 16))


def test_worktree_workspace_commits_cleanly(lin, run_dir, tmp_path):
    """An agent workspace can be a git worktree of a version; committing it ignores its .git link and .avo/."""
    v0 = lin.commit(write_program(tmp_path / "p", {"kernel.py": "k\n"}), result(1.0))
    ws = lin.add_worktree(v0, tmp_path / "ws")
    assert (ws / ".git").is_file() and (ws / "kernel.py").read_text() == "k\n" and (ws / ".avo/score.json").exists()
    (ws / "kernel.py").write_text("k2\n")
    v1 = lin.commit(ws, result(2.0))
    assert git(run_dir / "lineage", "ls-tree", "-r", "--name-only", v1.sha).split() == [".avo/notes.md", ".avo/score.json", "kernel.py"]
    assert v1.score == 2.0
    lin.remove_worktree(ws)
    assert not ws.exists()

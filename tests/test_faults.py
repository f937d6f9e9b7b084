"""Faults a days-long run survives: the disk filling up while committing, the model server going down."""
import errno
import subprocess

import pytest
from fake_llm import DROP, error, text_reply
from test_evolve import build

from avo.errors import UserError
from avo.lineage import DiskFullError, Lineage
from avo.llm import LLMClient, LLMError, LLMOutageError, LLMSettings


def write_program(path, text="k = 1\n"):
    path.mkdir(parents=True, exist_ok=True)
    (path / "kernel.py").write_text(text)
    return path


def test_disk_full_while_committing_is_a_clear_error_and_the_lineage_stays_intact(tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    lineage = Lineage(run_dir)
    v0 = lineage.commit(write_program(tmp_path / "p0"), {"score": 1.0, "correct": True}, message="seed")
    lineage.record_attempt(tmp_path / "p0", {"outcome": "seed"})
    real_store = Lineage._store
    calls = []

    def store(self, kind, data):
        calls.append(kind)
        if len(calls) > 2:  # a few objects get written, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_store(self, kind, data)

    monkeypatch.setattr(Lineage, "_store", store)
    with pytest.raises(DiskFullError) as info:
        lineage.commit(write_program(tmp_path / "p1", "k = 2\n"), {"score": 2.0, "correct": True}, message="v1")
    message = str(info.value)
    assert isinstance(info.value, UserError)
    assert "No space left on device" in message and "Free some space" in message and f"resume={run_dir}" in message
    with pytest.raises(DiskFullError, match="recording an attempt"):
        lineage.record_attempt(tmp_path / "p1", {"outcome": "rejected"})
    monkeypatch.setattr(Lineage, "_store", real_store)
    # Intact: the same versions and attempts, git agrees, and the run can go on once there is space.
    reopened = Lineage(run_dir)
    assert [v.sha for v in reopened.versions("main")] == [v0.sha]
    assert [a["n"] for a in reopened.attempts()] == [1]
    subprocess.run(["git", "-C", str(run_dir / "lineage"), "fsck", "--no-dangling"], check=True, capture_output=True)
    v1 = reopened.commit(tmp_path / "p1", {"score": 2.0, "correct": True}, message="v1")
    assert v1.number == 1 and reopened.record_attempt(tmp_path / "p1", {"outcome": "accepted"})["n"] == 2
    lineage.close()
    reopened.close()


def test_disk_full_in_the_attempt_log_ends_the_run_and_the_attempt_is_recovered(tmp_path, monkeypatch):
    evo, lineage, _ = build(tmp_path, max_attempts=4)
    evo.start()

    def full(self, text):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Lineage, "_append_line", full)
    with pytest.raises(DiskFullError):
        evo.run()
    monkeypatch.undo()
    # The attempt's ref was written before the line: reopening recovers its line from git.
    attempts = Lineage(tmp_path / "run").attempts()
    assert [a["n"] for a in attempts] == [1, 2] and attempts[1]["recovered"]
    evo2, lineage2, _ = build(tmp_path, max_attempts=4)
    evo2.run()
    assert [a["n"] for a in lineage2.attempts()] == list(range(1, 6))


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.now += seconds


def outage_client(server, clock, **kw):
    settings = LLMSettings(model="fake-model", base_url=server.url, retry_backoff_s=5.0, retry_max_wait_s=60.0,
                           max_retries=2, timeout_s=10, **kw)
    return LLMClient(settings, sleep=clock.sleep, clock=clock)


def test_model_server_down_for_minutes_is_waited_out(llm_server):
    clock = Clock()
    llm_server.add(text_reply("first"), *[DROP] * 12, text_reply("back"))
    c = outage_client(llm_server, clock, max_outage_s=1800)
    assert c.chat([{"role": "user", "content": "a"}]).content == "first"
    # 12 dropped connections, far beyond max_retries=2: waited out, not counted as retries.
    assert c.chat([{"role": "user", "content": "b"}]).content == "back"
    assert c.waited_s == pytest.approx(clock.now) and 300 < clock.now < 1800


def test_model_server_down_too_long_ends_the_run_cleanly(llm_server):
    clock = Clock()
    llm_server.add(text_reply("first"), *[DROP] * 200)
    c = outage_client(llm_server, clock, max_outage_s=600)
    c.chat([{"role": "user", "content": "a"}])
    with pytest.raises(LLMOutageError, match=r"down for 1\d\.\d minutes .*max_outage_s=600") as info:
        c.chat([{"role": "user", "content": "b"}])
    assert isinstance(info.value, UserError) and 600 <= clock.now < 700


def test_server_errors_are_still_retried_only_max_retries_times(llm_server):
    clock = Clock()
    llm_server.add(text_reply("first"), *[error(503, "overloaded")] * 3)
    c = outage_client(llm_server, clock)
    c.chat([{"role": "user", "content": "a"}])
    with pytest.raises(LLMError, match="gave up after 3 tries"):
        c.chat([{"role": "user", "content": "b"}])

"""agent=cli: a small Python script stands in for an external coding agent (it edits CONFIG in kernel.py)."""
import json
import shlex
import sys

import pytest
from e2e import FAST, attempts, git, run_py

from avo.errors import UserError

AGENT = '''import os, re, sys
prompt = open(sys.argv[1]).read()
assert "kernel" in prompt and "TFLOPS" in prompt, prompt
print("secret seen:", os.environ.get("AVO_TEST_SECRET_KEY", "none"))
src = open("kernel.py").read()
src = src.replace({old!r}, {new!r})
open("kernel.py", "w").write(src)
open("NOTES.md", "w").write("# Changed CONFIG\\nThe stand-in agent edited kernel.py.\\n")
'''


def agent_script(tmp_path, old, new):
    path = tmp_path / "agent.py"
    path.write_text(AGENT.format(old=old, new=new))
    return f"{shlex.quote(sys.executable)} {shlex.quote(str(path))} {{prompt_file}}"


def test_cli_step_commits_what_the_command_left(make_run, tmp_path, monkeypatch):
    monkeypatch.setenv("AVO_TEST_SECRET_KEY", "hunter2-hunter2")
    run = make_run(operator="cli", command=agent_script(tmp_path, '"A": 1,', '"A": 2,'))
    assert run.evolution.run() == 2.0
    version = run.lineage.best()
    assert version.message.startswith("cli: Changed CONFIG") and "stand-in agent" in version.notes
    assert "NOTES.md" not in run.lineage.files(version)
    log = (run.run_dir / "agent" / "cli" / "step-1.log").read_text()
    assert "secret seen: none" in log and "exit code 0" in log  # *KEY* variables are withheld


def test_cli_without_change_and_with_timeout(make_run, tmp_path):
    run = make_run(operator="cli", command="sleep 20", timeout_s=1, max_versions=None, max_attempts=1)
    run.evolution.run()
    record = run.attempts()[-1]
    assert record["outcome"] == "invalid" and record["stage"] == "unchanged" and "killed after the timeout" in record["error"]


def test_cli_config_errors(make_run):
    with pytest.raises(UserError, match="needs a command"):
        make_run(operator="cli", command="")
    with pytest.raises(UserError, match="not installed"):
        make_run(operator="cli", command="no-such-agent-cli --go {prompt}")


@pytest.mark.slow
def test_cli_cpu_run_commits(tmp_path):
    run_dir = tmp_path / "run"
    command = agent_script(tmp_path, '"num_warps": 8,', '"num_warps": 4,')
    proc = run_py(*FAST, "agent=cli", f"agent.command={json.dumps(command)}", f"hydra.run.dir={run_dir}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [a["outcome"] for a in attempts(run_dir)] == ["seed", "accepted"]
    assert '"num_warps": 4,' in git(run_dir, "show", "main/v1:kernel.py")

import pytest

from avo.program import ProgramError, check_program_dir, read_tunables, write_config

SOURCE = '''"""A program."""
import math

TUNABLES = {"BLOCK_M": [32, 64], "num_warps": [4, 8]}
CONFIG = {
    "BLOCK_M": 64,  # a comment that goes away
    "num_warps": 4,
}


def attention(q, k, v, *, causal, sm_scale):
    return CONFIG["BLOCK_M"]
'''


def test_read_and_rewrite_config_keeps_the_rest(tmp_path):
    (tmp_path / "kernel.py").write_text(SOURCE)
    tunables, config = read_tunables(tmp_path)
    assert tunables == {"BLOCK_M": [32, 64], "num_warps": [4, 8]}
    assert config == {"BLOCK_M": 64, "num_warps": 4}
    write_config(tmp_path, {"BLOCK_M": 32, "num_warps": 8})
    text = (tmp_path / "kernel.py").read_text()
    assert read_tunables(tmp_path)[1] == {"BLOCK_M": 32, "num_warps": 8}
    assert text.startswith('"""A program."""\nimport math\n') and text.endswith("return CONFIG[\"BLOCK_M\"]\n")
    ns = {}
    exec(compile(text, "kernel.py", "exec"), ns)
    assert ns["attention"](None, None, None, causal=True, sm_scale=1.0) == 32


def test_no_tunables_is_empty(tmp_path):
    (tmp_path / "kernel.py").write_text("def attention(q, k, v, *, causal, sm_scale):\n    return q\n")
    assert read_tunables(tmp_path) == ({}, {})
    with pytest.raises(ProgramError, match="no module-level CONFIG"):
        write_config(tmp_path, {"a": 1})


def test_non_literal_config_is_refused(tmp_path):
    (tmp_path / "kernel.py").write_text("X = 3\nCONFIG = {'a': X}\n")
    with pytest.raises(ProgramError, match="literal dict"):
        read_tunables(tmp_path)


def test_contract_errors_name_the_fix(tmp_path):
    with pytest.raises(ProgramError, match="does not exist"):
        check_program_dir(tmp_path / "nope")
    with pytest.raises(ProgramError, match="has no kernel.py.*attention"):
        check_program_dir(tmp_path)

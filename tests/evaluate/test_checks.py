import pytest
import torch

from avo import PROJECT_ROOT
from avo.evaluate import checks


def write(d, name, text):
    p = d / name
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)
    return p


@pytest.mark.parametrize("line, rule", [
    ("out = F.scaled_dot_product_attention(q, k, v)", "sdpa"),
    ("from flash_attn import flash_attn_func", "flash_attn"),
    ("torch.ops.aten._efficient_attention_forward(q, k, v)", "xformers"),
    ("torch.ops.aten._cudnn_attention_forward(q, k, v)", "cudnn_attention"),
    ("import xformers.ops", "xformers"),
    ("torch.nn.functional.multi_head_attention_forward(x)", "torch_mha"),
    ("from torch.nn.attention.flex_attention import flex_attention", "torch_mha"),
    ("torch.ops.aten._fused_attn_thing(q)", "aten_fused_attention"),
    ("import subprocess", "subprocess"),
    ("os.system('nvcc ...')", "subprocess"),
    ("from threading import Thread", "threading"),
    ("import multiprocessing as mp", "multiprocessing"),
    ("import socket", "socket"),
])
def test_forbidden_python_lines_are_refused_with_file_and_line(tmp_path, line, rule):
    write(tmp_path, "kernel.py", "import torch\n\n" + line + "\n")
    [v] = [v for v in checks.scan_sources(tmp_path) if v.rule == rule]
    assert (v.path, v.line) == ("kernel.py", 3)
    message = checks.static_error(tmp_path)
    assert "kernel.py:3:" in message and line in message


def test_native_sources_in_subdirectories_are_scanned(tmp_path):
    write(tmp_path, "kernel.py", "import torch\n")
    write(tmp_path, "csrc/attn.cu", "// fast\nauto o = graph.sdpa(q, k, v, opts);\nstd::thread t(work);\n")
    found = {(v.path, v.line, v.rule) for v in checks.scan_sources(tmp_path)}
    assert found == {("csrc/attn.cu", 2, "cudnn_attention"), ("csrc/attn.cu", 3, "native_concurrency")}


def test_ordinary_code_passes(tmp_path):
    write(tmp_path, "kernel.py", "import torch\ntorch.set_num_threads(1)\ntorch.backends.cudnn.benchmark = True\n"
                                 "def attention(q, k, v, *, causal, sm_scale):\n    return q  # my own attention\n")
    write(tmp_path, "notes.md", "faster than scaled_dot_product_attention")  # not a source file
    assert checks.scan_sources(tmp_path) == []
    assert checks.static_error(tmp_path) is None


def test_the_seed_passes_static_checks():
    assert checks.static_error(PROJECT_ROOT / "seeds" / "triton_fa") is None


def test_rules_can_be_extended(tmp_path):
    write(tmp_path, "kernel.py", "import ctypes\n")
    extra = checks.Rule("ctypes", __import__("re").compile(r"\bctypes\b"), "loads native code unchecked")
    [v] = checks.scan_sources(tmp_path, checks.RULES + [extra])
    assert str(v).startswith("kernel.py:1: loads native code unchecked [ctypes]")


# --- outputs -------------------------------------------------------------------------------------------

def test_check_output_accepts_a_plain_tensor_even_non_contiguous():
    q = torch.randn(1, 8, 2, 16)
    out = torch.randn(1, 2, 8, 16).transpose(1, 2)
    assert not out.is_contiguous()
    assert checks.check_output(out, q) is None


@pytest.mark.parametrize("make_out, expect", [
    (lambda q: q.clone().as_subclass(type("Sub", (torch.Tensor,), {})), "expected a plain torch.Tensor"),
    (lambda q: q.detach().numpy(), "numpy.ndarray"),
    (lambda q: q[:, :-1].clone(), "shape (1, 7, 2, 16)"),
    (lambda q: q.double(), "dtype torch.float64"),
    (lambda q: torch.empty_like(q, device="meta"), "on meta"),
    (lambda q: q.to_sparse(), "layout torch.sparse_coo"),
    (lambda q: q.clone().index_fill_(1, torch.tensor([3]), float("inf")), "NaN/Inf element(s)"),
])
def test_check_output_refuses(make_out, expect):
    q = torch.randn(1, 8, 2, 16)
    assert expect in checks.check_output(make_out(q), q)


def test_check_output_reports_first_nan_position():
    q = torch.randn(1, 8, 2, 16)
    out = q.clone()
    out[0, 5, 1, 3] = float("nan")
    assert "1 NaN/Inf element(s) of 256, first at (b, s, h, d) = (0, 5, 1, 3)" in checks.check_output(out, q)


def test_inputs_unchanged():
    inputs = {"q": torch.randn(4), "k": torch.randn(4)}
    clones = {n: t.clone() for n, t in inputs.items()}
    assert checks.check_inputs_unchanged(inputs, clones) is None
    inputs["k"][2] += 1
    assert "modified its input(s) k in place" in checks.check_inputs_unchanged(inputs, clones)


def test_compare_reports_error_and_worst_element():
    ref = torch.zeros(1, 3, 2, 4)
    out = ref.clone().half()
    assert checks.compare(out, ref, atol=1e-2, rtol=1e-2) == (0.0, None)
    out[0, 2, 1, 0] = 0.5
    out[0, 0, 0, 0] = 0.005  # within atol: counted in max_err only if largest
    max_err, message = checks.compare(out, ref, atol=1e-2, rtol=1e-2)
    assert max_err == 0.5
    assert "1 of 24 output elements out of tolerance" in message
    assert "worst at (b, s, h, d) = (0, 2, 1, 0): out 0.5, ref 0" in message

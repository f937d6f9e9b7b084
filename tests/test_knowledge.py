"""The knowledge base: chunking (line numbers), tokenisation, BM25 search over knowledge/, user paths and
installed packages, errors, and `avo kb` through avo.cli.main."""
import textwrap
from pathlib import Path

import pytest

from avo import PROJECT_ROOT
from avo.cli import main
from avo.knowledge import (KnowledgeBase, Passage, chunk_c, chunk_file, chunk_markdown, chunk_python, package_dir,
                           tokenize)

KNOWLEDGE = PROJECT_ROOT / "knowledge"
DOCS = ["hopper_architecture", "flashattention", "online_softmax", "causal_masking", "gqa", "triton_hopper",
        "profiling", "baselines"]


@pytest.fixture(scope="module")
def kb():
    return KnowledgeBase.build()


def lines_of(text: str, p: Passage) -> str:
    return "\n".join(text.splitlines()[p.line - 1:p.end_line])


# ---------------------------------------------------------------------------------------------- documents


@pytest.mark.parametrize("name", DOCS)
def test_documents_exist_and_cite_sources(name):
    text = (KNOWLEDGE / f"{name}.md").read_text()
    lines = text.splitlines()
    assert 70 <= len(lines) <= 220, len(lines)
    assert lines[0].startswith("# ")
    assert "## Sources" in text and "http" in text.split("## Sources")[1]


def test_baselines_copy_the_measured_table():
    text = (KNOWLEDGE / "baselines.md").read_text()
    shared = Path("/work/shared/h100_baselines.md")
    rows = [l for l in text.splitlines() if l.startswith("| mha_") or l.startswith("| gqa")]
    assert len(rows) == 36 and "799" in text and "h100_baselines.md" in text
    if shared.exists():
        assert all(row in shared.read_text() for row in rows)


# ---------------------------------------------------------------------------------------------- chunking

MD = textwrap.dedent("""\
    Preamble line.

    # Online softmax

    Intro.

    ## Lazy rescaling

    Only when the max grows.

    ```python
    # not a heading
    x = 1
    ```

    ### Threshold
    tau = 8

    ## Final
    done
    """)


def test_markdown_sections_titles_and_lines():
    ps = chunk_markdown("k/doc.md", MD)
    got = [(p.title, p.line, p.end_line) for p in ps]
    assert got == [
        ("doc", 1, 1),
        ("Online softmax", 3, 5),
        ("Online softmax > Lazy rescaling", 7, 14),
        ("Online softmax > Lazy rescaling > Threshold", 16, 17),
        ("Online softmax > Final", 19, 20),
    ]
    for p in ps:
        assert p.text == lines_of(MD, p) and p.path == "k/doc.md"


def test_long_markdown_section_splits_at_paragraphs():
    body = "\n\n".join(f"Paragraph {i}.\n" + "word " * 30 for i in range(40))
    text = f"# Big\n\n{body}\n"
    ps = chunk_markdown("big.md", text)
    assert len(ps) > 2
    assert all(p.end_line - p.line + 1 <= 60 for p in ps)
    assert all(p.title.startswith("Big (") for p in ps)
    # Pieces start at paragraph starts and together cover every paragraph, in order.
    starts = [p.line for p in ps]
    assert starts == sorted(starts) and all(text.splitlines()[s - 1].startswith(("# Big", "Paragraph")) for s in starts)
    assert "Paragraph 39." in ps[-1].text


PY = textwrap.dedent('''\
    """Module doc."""
    import os

    CONST = 3


    @decorator
    def first(a, b):
        return a + b


    class Thing:
        """A thing."""

        def method(self):
            return 1


    async def later():
        pass
    ''')


def test_python_top_level_definitions():
    ps = chunk_python("pkg/mod.py", PY)
    got = [(p.title, p.line, p.end_line) for p in ps]
    assert ("def first", 7, 9) in got  # the decorator line included
    assert ("class Thing", 12, 16) in got
    assert ("def later", 19, 20) in got
    assert ("mod.py", 1, 4) in got  # module code between definitions
    for p in ps:
        assert p.text == lines_of(PY, p)


def test_long_python_class_splits_into_methods():
    methods = "\n".join(f"    def m{i}(self):\n" + "        x = 1\n" * 8 for i in range(10))
    text = f"class Big:\n    '''Doc.'''\n\n{methods}"
    ps = chunk_python("big.py", text)
    titles = [p.title for p in ps]
    assert "class Big > def m0" in titles and "class Big > def m9" in titles
    m3 = next(p for p in ps if p.title == "class Big > def m3")
    assert text.splitlines()[m3.line - 1].strip() == "def m3(self):" and m3.end_line - m3.line == 8


def test_python_syntax_error_falls_back_to_windows():
    text = "def broken(:\n" + "x = 1\n" * 100
    ps = chunk_python("bad.py", text)
    assert ps[0].line == 1 and ps[-1].end_line == 101 and len(ps) >= 2


CU = textwrap.dedent("""\
    #include <cuda.h>
    #define CHECK(x) do { if (!(x)) { abort(); } } while (0)

    namespace flash {

    template <int kBlockM, typename T>
    __global__ void __launch_bounds__(256, 1)
    attn_fwd(const T* __restrict__ q, T* o, int n) {
        // a comment with { brace
        const char* s = "}";
        if (n > 0) {
            o[0] = q[0];
        }
    }

    struct Params {
        int n;
        float scale;
    };

    __device__ inline float2 helper(float a) { return make_float2(a, a); }

    }  // namespace flash

    void Foo::run() const noexcept(true) {
      auto f = [](int a) { return a; };
      static const int table[] = {1, 2, 3};
    }
    """)


def test_cuda_definitions_by_brace_matching():
    ps = chunk_c("csrc/attn.cu", CU)
    got = {p.title: (p.line, p.end_line) for p in ps}
    assert got["attn_fwd()"] == (6, 14)  # template line to the closing brace; braces in comments/strings ignored
    assert got["struct Params"] == (16, 19)
    assert got["helper()"] == (21, 21)
    assert got["Foo::run()"] == (25, 28)
    for p in ps:
        assert p.text == lines_of(CU, p)
    assert chunk_file("a/b.cuh", CU)[1].title == "attn_fwd()"


def test_c_without_definitions_and_other_text_use_windows():
    decls = "\n".join(f"int f{i}(int x);" for i in range(100))
    ps = chunk_c("api.h", decls)
    assert [(p.line, p.end_line) for p in ps] == [(1, 40), (41, 80), (81, 100)]
    ps = chunk_file("notes.txt", "\n".join(f"line {i}" for i in range(1, 46)))
    assert [(p.line, p.end_line) for p in ps] == [(1, 45)]  # a short tail joins the window before it


def test_tokenize_splits_identifiers():
    toks = tokenize("The warp_specialize flag of cpAsyncBulk in sm_90a, setmaxnreg; num_stages")
    for t in ["warp_specialize", "warp", "specialize", "cpasyncbulk", "cp", "async", "bulk", "sm_90a",
              "setmaxnreg", "num_stages", "num", "stage"]:
        assert t in toks, t
    assert "the" not in toks and "of" not in toks
    assert "specialize" in tokenize("Warp specialization")  # -ization folds to -ize


# ---------------------------------------------------------------------------------------------- search


@pytest.mark.parametrize("query,doc,heading", [
    ("warp specialization", None, "warp speciali"),
    ("branchless rescaling", "knowledge/online_softmax.md", "Branchless rescaling"),
    ("GQA head mapping", "knowledge/gqa.md", "Head mapping"),
    ("causal block skipping", "knowledge/causal_masking.md", "causal block skipping"),
    ("num_stages", "knowledge/triton_hopper.md", "num_stages"),
    ("setmaxnreg", "knowledge/hopper_architecture.md", "setmaxnreg"),
])
def test_builtin_search_finds_the_relevant_section(kb, query, doc, heading):
    hits = kb.search(query, k=3)
    assert any((doc is None or h.path == doc) and heading.lower() in h.title.lower() for h in hits), \
        [(h.path, h.title) for h in hits]
    assert hits == sorted(hits, key=lambda h: -h.score)


def test_search_results_point_at_file_lines(kb):
    for hit in kb.search("online softmax exp2 log2", k=5):
        assert hit.path in kb.files()
        numbered = kb.read(hit.path, hit.line, hit.end_line).splitlines()
        assert numbered[0].split(None, 1)[0] == str(hit.line)
        assert len(numbered) == hit.end_line - hit.line + 1
        assert hit.text.splitlines()[0] in numbered[0]


def test_search_edge_cases(kb):
    assert kb.search("zzzqqq nonexistentword", k=5) == []
    assert kb.search("warp", k=0) == []
    assert len(kb.search("attention", k=2)) == 2
    assert set(kb.files()) >= {f"knowledge/{d}.md" for d in DOCS}


def test_read_numbers_lines_and_rejects_unknown_paths(kb):
    out = kb.read("knowledge/gqa.md", 1, 2)
    assert out.splitlines()[0].startswith("1  # GQA")
    assert kb.read("knowledge/gqa.md:1-1") == out.splitlines()[0]
    with pytest.raises(ValueError, match="knowledge/gqa.md"):
        kb.read("knowledge/gqa.m")


def test_user_folder_is_indexed_with_its_label(tmp_path):
    src = tmp_path / "flash-attention"
    (src / "hopper").mkdir(parents=True)
    (src / "hopper" / "mainloop.hpp").write_text(CU)
    (src / "notes.md").write_text("# Notes\n\n## Pingpong\n\nThe zebrafish schedule.\n")
    (src / "__pycache__").mkdir()
    (src / "__pycache__" / "x.py").write_text("def hidden_function_xyz():\n    pass\n")
    (src / "blob.bin").write_bytes(b"\x00\x01binary")
    (src / "big.txt").write_text("hugefileword\n" * 100_000)  # > 1 MB: skipped
    kb = KnowledgeBase.build(builtin=False, paths=[str(src)])
    assert kb.files() == ["flash-attention/hopper/mainloop.hpp", "flash-attention/notes.md"]
    hit = kb.search("attn_fwd", k=1)[0]
    assert (hit.path, hit.line, hit.end_line, hit.title) == ("flash-attention/hopper/mainloop.hpp", 6, 14, "attn_fwd()")
    assert kb.search("zebrafish", k=1)[0].title == "Notes > Pingpong"
    assert kb.search("hidden_function_xyz hugefileword") == []


def test_cache_roundtrip(tmp_path):
    src = tmp_path / "docs"
    src.mkdir()
    (src / "a.md").write_text("# A\n\nalpha beta\n")
    cache = tmp_path / "cache"
    first = KnowledgeBase.build(builtin=False, paths=[str(src)], cache_dir=cache)
    assert len(list(cache.glob("*.pkl"))) == 1
    second = KnowledgeBase.build(builtin=False, paths=[str(src)], cache_dir=cache)
    assert second.search("alpha") == first.search("alpha")
    (src / "b.md").write_text("# B\n\ngamma\n")
    third = KnowledgeBase.build(builtin=False, paths=[str(src)], cache_dir=cache)
    assert third.search("gamma")[0].path == "docs/b.md"
    assert len(list(cache.glob("*.pkl"))) == 1  # the stale state was replaced


def test_installed_package_is_indexed_by_import_name():
    kb = KnowledgeBase.build(builtin=False, packages=["omegaconf"])
    assert package_dir("omegaconf").name == "omegaconf"
    assert "omegaconf/omegaconf.py" in kb.files()
    hits = kb.search("to_container", k=5)
    assert any(h.path == "omegaconf/omegaconf.py" and "to_container" in h.title for h in hits), \
        [(h.path, h.title) for h in hits]


def test_missing_path_or_package_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match=r"knowledge.paths.*does not exist"):
        KnowledgeBase.build(paths=[str(tmp_path / "nope")])
    with pytest.raises(ValueError, match=r"knowledge.packages.*no installed package 'no_such_pkg_xyz'.*pip install"):
        KnowledgeBase.build(packages=["no_such_pkg_xyz"])


# ---------------------------------------------------------------------------------------------- CLI


@pytest.fixture
def no_user_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def test_cli_kb_search_prints_file_lines(capsys, no_user_cache):
    assert main(["kb", "search", "branchless rescaling", "-k", "2"]) == 0
    out = capsys.readouterr().out
    first = out.splitlines()[0]
    path_lines, score, title = first.split("  ", 2)
    assert path_lines.startswith("knowledge/online_softmax.md:")
    start, end = map(int, path_lines.rsplit(":", 1)[1].split("-"))
    assert 0 < start <= end and float(score) > 0 and "Branchless rescaling" in title
    assert out.splitlines()[1].startswith("    ")


def test_cli_kb_search_with_overrides_after_options(tmp_path, capsys, no_user_cache):
    (tmp_path / "mydocs").mkdir()
    (tmp_path / "mydocs" / "x.md").write_text("# X\n\n## Quokka kernels\n\nquokka\n")
    assert main(["kb", "search", "quokka", "-k", "1", f"knowledge.paths=[{tmp_path / 'mydocs'}]",
                 "knowledge.builtin=false"]) == 0
    assert capsys.readouterr().out.startswith("mydocs/x.md:3-5  ")


def test_cli_kb_read(capsys, no_user_cache):
    assert main(["kb", "read", "knowledge/gqa.md", "--start", "1", "--end", "1"]) == 0
    assert capsys.readouterr().out.strip() == "1  # GQA and MQA in attention kernels"


@pytest.mark.parametrize("args,message", [
    (["kb", "read", "knowledge/nope.md"], "no indexed file"),
    (["kb", "search", "x", "knowledge.packages=[no_such_pkg_xyz]"], "no installed package"),
    (["kb", "search", "x", "knowledge.paths=[/nonexistent/avo-kb]"], "does not exist"),
    (["kb", "search", "x", "knowledge.pathz=[]"], "pathz"),
    (["kb", "search", "x", "--bogus"], "unrecognized"),
    (["kb", "search", "x", "-k", "0"], "at least 1"),
    (["kb"], "required"),
])
def test_cli_kb_usage_errors_exit_2(args, message, capsys, no_user_cache):
    assert main(args) == 2
    assert message in capsys.readouterr().err

"""The knowledge base: documents and reference code the agent may consult, with a ranked BM25 search.

Roots are (label, directory or file) pairs. Every file under a root is cut into passages:

- Markdown by headings (each section a passage titled by its heading path, "Online softmax > Lazy
  rescaling"; a long section is split at paragraph boundaries into pieces of at most MAX_LINES lines /
  MAX_CHARS characters, never inside a fenced code block when it can be helped);
- Python by top-level functions and classes (through `ast`; a long class by its methods), the module code
  between them in windows;
- C, C++ and CUDA (.c .cc .cpp .cu .cuh .h .hpp ...) by a brace-matching scan for top-level function,
  struct and class definitions (namespaces and `extern "C"` blocks are looked into), the rest in windows;
- anything else that is text by fixed windows of WINDOW lines.

A passage's `path` is its display path: the root's label, then the path relative to the root
("knowledge/online_softmax.md", "triton/language/core.py"). Binary files, files over MAX_FILE_BYTES and
directories such as .git, __pycache__, build and node_modules are skipped.

Tokenisation keeps identifiers useful: `warp_specialize` yields `warp_specialize`, `warp`, `specialize`;
`cpAsyncBulk` yields `cpasyncbulk`, `cp`, `async`, `bulk`; everything is lowercased, a small stop-word
list is dropped and a light suffix stemmer folds plurals and -ization/-ized/-izing ("specialization" and
`warp_specialize` meet). Ranking is BM25 (the `bm25s` library, numpy only) over the passage's display
path, title and text.

The builtin documents live in `<project>/knowledge/`. `KnowledgeBase.build(paths=[...], packages=[...])`
adds user folders (a clone of flash-attention, CUTLASS, CUDA docs) and installed packages' sources
(found with `importlib.util.find_spec`, without importing them). `cache_dir` keeps the parsed passages of
each root in a pickle keyed by the paths, mtimes and sizes of its files.
"""
from __future__ import annotations

import ast
import bisect
import difflib
import hashlib
import importlib.util
import os
import pickle
import re
from dataclasses import dataclass, replace
from functools import lru_cache
from itertools import chain
from pathlib import Path

import numpy as np

CACHE_VERSION = 3  # bump when chunking or Passage change, so that cached indexes are rebuilt
MAX_FILE_BYTES = 1_000_000
MAX_LINES = 60  # the longest passage of prose or code before it is split
MAX_CHARS = 4000
WINDOW = 40  # lines per window of a file without structure
SKIP_DIRS = {".git", ".hg", ".svn", "__pycache__", "build", "dist", "node_modules", ".venv", "venv",
             ".mypy_cache", ".pytest_cache", ".ruff_cache", ".tox", ".eggs", ".idea", ".vscode", "site-packages"}
BINARY_SUFFIXES = {".pyc", ".pyo", ".so", ".a", ".o", ".obj", ".dll", ".dylib", ".exe", ".bin", ".bc", ".cubin",
                   ".fatbin", ".png", ".jpg", ".jpeg", ".gif", ".svg", ".ico", ".pdf", ".zip", ".gz", ".tgz",
                   ".bz2", ".xz", ".whl", ".tar", ".pt", ".pth", ".npy", ".npz", ".pkl", ".pickle", ".onnx",
                   ".safetensors", ".woff", ".woff2", ".ttf", ".mp4", ".db", ".sqlite", ".parquet"}
MARKDOWN_SUFFIXES = {".md", ".markdown", ".mdx"}
PYTHON_SUFFIXES = {".py", ".pyi"}
C_SUFFIXES = {".c", ".cc", ".cpp", ".cxx", ".cu", ".cuh", ".h", ".hh", ".hpp", ".hxx", ".inl", ".inc"}

STOP_WORDS = frozenset(
    "a an and are as at be but by for from has have if in into is it its of on or that the their then there "
    "these this to was were which while will with what when where how does do can i we you not no self".split())


# ---------------------------------------------------------------------------------------------- passages


@dataclass
class Passage:
    path: str  # display path: the root's label / the path relative to the root
    line: int  # 1-based first line
    end_line: int  # 1-based last line, inclusive
    title: str  # heading path ("Online softmax > Lazy rescaling") or "def name"
    text: str
    score: float = 0.0


def _passage(path: str, lines: list[str], start: int, end: int, title: str) -> Passage:
    """Lines start..end (1-based, inclusive) of `lines` as a passage."""
    return Passage(path, start, end, title, "\n".join(lines[start - 1:end]))


def _windows(path: str, lines: list[str], start: int, end: int, title: str, size: int = WINDOW) -> list[Passage]:
    """Lines start..end in windows of `size` lines, blank-only windows dropped; the title numbered when split."""
    out = []
    starts = list(range(start, end + 1, size))
    if len(starts) > 1 and end - starts[-1] + 1 < size // 4:  # a short tail joins the window before it
        starts.pop()
    for i, s in enumerate(starts):
        e = starts[i + 1] - 1 if i + 1 < len(starts) else end
        chunk = lines[s - 1:e]
        if not any(line.strip() for line in chunk):
            continue
        # Trim blank lines at both ends so that line numbers point at content.
        while chunk and not chunk[0].strip():
            chunk, s = chunk[1:], s + 1
        while chunk and not chunk[-1].strip():
            chunk, e = chunk[:-1], e - 1
        t = title if len(starts) == 1 else f"{title} (lines {s}-{e})"
        out.append(Passage(path, s, e, t, "\n".join(chunk)))
    return out


def _too_long(lines: list[str], start: int, end: int) -> bool:
    return end - start + 1 > MAX_LINES or sum(len(x) + 1 for x in lines[start - 1:end]) > MAX_CHARS


def _split_long(path: str, lines: list[str], start: int, end: int, title: str) -> list[Passage]:
    """A definition that is too long as one passage: windows of MAX_LINES lines."""
    if not _too_long(lines, start, end):
        return [_passage(path, lines, start, end, title)]
    return _windows(path, lines, start, end, title, size=MAX_LINES)


# ---------------------------------------------------------------------------------------------- markdown

_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
_FENCE = re.compile(r"^\s*(```|~~~)")


def chunk_markdown(path: str, text: str) -> list[Passage]:
    """One passage per section (heading path as title); long sections split at blank lines outside code."""
    lines = text.splitlines()
    default_title = Path(path).stem
    sections: list[tuple[int, int, str]] = []  # (start, end, title)
    stack: list[tuple[int, str]] = []
    start, title, in_fence = 1, default_title, False
    for i, line in enumerate(lines, 1):
        if _FENCE.match(line):
            in_fence = not in_fence
            continue
        m = None if in_fence else _HEADING.match(line)
        if m:
            if i > start:
                sections.append((start, i - 1, title))
            level, name = len(m.group(1)), m.group(2).strip()
            while stack and stack[-1][0] >= level:
                stack.pop()
            stack.append((level, name))
            start, title = i, " > ".join(n for _, n in stack)
    if start <= len(lines):
        sections.append((start, len(lines), title))

    out: list[Passage] = []
    for s, e, t in sections:
        while e >= s and not lines[e - 1].strip():
            e -= 1
        while s <= e and not lines[s - 1].strip():
            s += 1
        if s > e:
            continue
        if not _too_long(lines, s, e):
            out.append(_passage(path, lines, s, e, t))
            continue
        # Paragraph boundaries: blank lines outside fenced code.
        breaks, fence = [], False
        for i in range(s, e + 1):
            if _FENCE.match(lines[i - 1]):
                fence = not fence
            elif not fence and not lines[i - 1].strip():
                breaks.append(i)
        pieces, ps = [], s
        for b in breaks + [e + 1]:
            pieces.append((ps, b - 1))
            ps = b + 1
        # Greedily merge consecutive paragraphs while the merge stays within the limits.
        merged: list[tuple[int, int]] = []
        for ps, pe in pieces:
            if ps > pe:
                continue
            if merged and not _too_long(lines, merged[-1][0], pe):
                merged[-1] = (merged[-1][0], pe)
            else:
                merged.append((ps, pe))
        n = 0
        for ps, pe in merged:
            parts = _split_long(path, lines, ps, pe, t) if _too_long(lines, ps, pe) else [_passage(path, lines, ps, pe, t)]
            for p in parts:
                n += 1
                out.append(p)
        if n > 1:  # number the pieces so that results of one section can be told apart
            for j, p in enumerate(out[len(out) - n:], 1):
                p.title = f"{t} ({j}/{n})"
    return out


# ---------------------------------------------------------------------------------------------- python


def _fill_gaps(path: str, lines: list[str], defs: list[Passage], title: str) -> list[Passage]:
    """The definitions plus windows over the lines between them (module code, imports, constants)."""
    covered = np.zeros(len(lines) + 2, dtype=bool)
    for p in defs:
        covered[p.line:p.end_line + 1] = True
    out = list(defs)
    i = 1
    while i <= len(lines):
        if covered[i]:
            i += 1
            continue
        j = i
        while j + 1 <= len(lines) and not covered[j + 1]:
            j += 1
        out.extend(_windows(path, lines, i, j, title))
        i = j + 1
    out.sort(key=lambda p: p.line)
    return out


def chunk_python(path: str, text: str) -> list[Passage]:
    """Top-level functions and classes (decorators included); a long class by its methods; the rest in windows."""
    lines = text.splitlines()
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError):
        return _windows(path, lines, 1, len(lines), Path(path).name)
    defs: list[Passage] = []
    for node in tree.body:
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            continue
        start = min([node.lineno] + [d.lineno for d in node.decorator_list])
        end = node.end_lineno or node.lineno
        kind = "class" if isinstance(node, ast.ClassDef) else "def"
        title = f"{kind} {node.name}"
        if kind == "class" and _too_long(lines, start, end):
            methods = [m for m in node.body if isinstance(m, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))]
            inner: list[Passage] = []
            for m in methods:
                ms = min([m.lineno] + [d.lineno for d in m.decorator_list])
                mk = "class" if isinstance(m, ast.ClassDef) else "def"
                inner.extend(_split_long(path, lines, ms, m.end_lineno or m.lineno, f"{title} > {mk} {m.name}"))
            # The class header, docstring and attributes between methods.
            sub = _fill_gaps(path, lines[:end], inner, title)
            defs.extend(p for p in sub if p.line >= start)
        else:
            defs.extend(_split_long(path, lines, start, end, title))
    return _fill_gaps(path, lines, defs, Path(path).name)


# ---------------------------------------------------------------------------------------------- C / C++ / CUDA

_C_TOKENS = re.compile(r'//[^\n]*|/\*.*?\*/|"(?:\\.|[^"\\\n])*"|\'(?:\\.|[^\'\\\n])*\'', re.S)
_TRANSPARENT = re.compile(r'^(?:namespace\b[\w:\s]*|extern\s*"C(?:\+\+)?"\s*|inline\s+namespace\b[\w:\s]*)$')
_TYPE_DEF = re.compile(r'\b(struct|class|union|enum)\s+(?:alignas\s*\([^)]*\)\s*)?(?:\[\[[^\]]*\]\]\s*)?'
                       r'(?:__\w+__\s*(?:\([^)]*\))?\s*)*(\w+)')
_FUNC_NAME = re.compile(r'([~\w:]+(?:operator\s*[^\s(]+)?)\s*\($')
_CONTROL = {"if", "for", "while", "switch", "catch", "return", "sizeof", "do", "else", "decltype", "alignof",
            "static_assert", "defined"}


def _blank_comments_and_strings(text: str) -> str:
    """Comments, string and char literals replaced by spaces, newlines kept: offsets and lines stay valid."""
    return _C_TOKENS.sub(lambda m: re.sub(r"[^\n]", " ", m.group(0)), text)


def _blank_preprocessor(text: str) -> str:
    """Preprocessor lines (with continuations) blanked, so a `#define X {` does not confuse the brace scan."""
    out, cont = [], False
    for line in text.split("\n"):
        if cont or line.lstrip().startswith("#"):
            cont = line.rstrip().endswith("\\")
            out.append(" " * len(line))
        else:
            out.append(line)
    return "\n".join(out)


def _definition_title(head: str) -> str | None:
    """The title of a definition whose text before its `{` is `head`, or None when it is not one."""
    head = " ".join(head.split())
    if not head:
        return None
    m = _TYPE_DEF.search(head)
    if m and "(" not in head.split(m.group(0))[0] and not head.rstrip().endswith(")") and not head.endswith("="):
        return f"{m.group(1)} {m.group(2)}"
    # A function: the last top-level parenthesised group's opener, after the name.
    depth, open_at = 0, None
    for i in range(len(head) - 1, -1, -1):
        c = head[i]
        if c == ")":
            depth += 1
        elif c == "(":
            depth -= 1
            if depth == 0:
                open_at = i
                # Skip trailing qualifiers' parens such as noexcept(...) or __launch_bounds__(...).
                before = head[:i].rstrip()
                word = re.search(r"([~\w:]+)$", before)
                if word and word.group(1) in ("noexcept", "__launch_bounds__", "alignas", "throw", "__attribute__",
                                              "__declspec", "requires", "decltype"):
                    continue
                break
    if open_at is None:
        return None
    m = _FUNC_NAME.search(head[:open_at + 1])
    if not m:
        return None
    name = m.group(1)
    if name.split("::")[-1] in _CONTROL or "=" in head[:open_at].split("<")[0][-3:]:
        return None
    return f"{name}()"


def chunk_c(path: str, text: str) -> list[Passage]:
    """Top-level function/struct/class definitions by brace matching; the rest (and unparseable files) in windows."""
    lines = text.splitlines()
    clean = _blank_preprocessor(_blank_comments_and_strings(text))
    newlines = [m.start() for m in re.finditer("\n", clean)]

    def lineno(offset: int) -> int:
        return bisect.bisect_left(newlines, offset) + 1

    defs: list[Passage] = []
    # Stack of ("transparent" | "def" | "other", offset, title); definitions are found at transparent depth.
    stack: list[tuple[str, int, str | None]] = []
    seg_start = 0  # where the text of the next statement/definition at the current level begins
    for m in re.finditer(r"[{};]", clean):
        c, pos = m.group(0), m.start()
        opaque = any(kind != "transparent" for kind, _, _ in stack)
        if c == ";":
            if not opaque:
                seg_start = pos + 1
        elif c == "{":
            if opaque:
                stack.append(("other", pos, None))
                continue
            head = clean[seg_start:pos]
            if _TRANSPARENT.match(" ".join(head.split())):
                stack.append(("transparent", pos, None))
                seg_start = pos + 1
                continue
            title = _definition_title(head)
            # The definition starts at its first non-blank character (template<...> included).
            lead = len(head) - len(head.lstrip())
            stack.append(("def" if title else "other", seg_start + lead, title))
        else:  # "}"
            if not stack:
                seg_start = pos + 1
                continue
            kind, start_off, title = stack.pop()
            if kind == "transparent":
                seg_start = pos + 1
            elif not any(k != "transparent" for k, _, _ in stack):
                if kind == "def" and title:
                    end_line = lineno(pos)
                    # A trailing `;` of struct/class definitions belongs to the definition.
                    defs.extend(_split_long(path, lines, lineno(start_off), end_line, title))
                seg_start = pos + 1
    if not defs:
        return _windows(path, lines, 1, len(lines), Path(path).name)
    # Definitions sharing lines (one-liners) would overlap: keep the first of overlapping ones.
    defs.sort(key=lambda p: p.line)
    kept: list[Passage] = []
    for p in defs:
        if kept and p.line <= kept[-1].end_line:
            continue
        kept.append(p)
    return _fill_gaps(path, lines, kept, Path(path).name)


def chunk_text(path: str, text: str) -> list[Passage]:
    """Fixed windows of WINDOW lines."""
    lines = text.splitlines()
    return _windows(path, lines, 1, len(lines), Path(path).name)


def chunk_file(path: str, text: str) -> list[Passage]:
    """Passages of one file by its kind (the suffix of `path`)."""
    suffix = Path(path).suffix.lower()
    if suffix in MARKDOWN_SUFFIXES:
        return chunk_markdown(path, text)
    if suffix in PYTHON_SUFFIXES:
        return chunk_python(path, text)
    if suffix in C_SUFFIXES:
        return chunk_c(path, text)
    return chunk_text(path, text)


# ---------------------------------------------------------------------------------------------- tokens

_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*|\d+(?:\.\d+)?")
_CAMEL = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+|\d+[a-z]*")


def _stem(word: str) -> str:
    """A light, conservative suffix folding: plurals and -ization/-ized/-izing to -ize."""
    if len(word) <= 3 or not word.isalpha():
        return word
    for suffix, repl in (("izations", "ize"), ("ization", "ize"), ("izing", "ize"), ("ized", "ize"),
                         ("isations", "ize"), ("isation", "ize")):
        if word.endswith(suffix):
            return word[: -len(suffix)] + repl
    if word.endswith("ies") and len(word) > 4:
        return word[:-3] + "y"
    if word.endswith(("sses", "shes", "ches", "xes")):
        return word[:-2]
    if word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1]
    return word


@lru_cache(maxsize=200_000)
def _word_tokens(raw: str) -> tuple[str, ...]:
    """The tokens of one word of the text (memoised: words repeat a lot in code)."""
    low = raw.lower()
    out: list[str] = []
    if low not in STOP_WORDS and low.strip("_"):
        out.append(_stem(low.strip("_")))
    if not raw.isdigit():
        parts = [p for piece in raw.split("_") for p in _CAMEL.findall(piece)]
        if len(parts) > 1:
            out.extend(_stem(p.lower()) for p in parts if p.lower() not in STOP_WORDS)
    return tuple(t for t in out if t)


def tokenize(text: str) -> list[str]:
    """Lowercased words with identifiers also split at underscores and camelCase; stop words dropped."""
    return list(chain.from_iterable(map(_word_tokens, _WORD.findall(text))))


# ---------------------------------------------------------------------------------------------- files


def _is_binary(path: Path, head: bytes) -> bool:
    return path.suffix.lower() in BINARY_SUFFIXES or b"\x00" in head


def _walk(root: Path) -> list[Path]:
    """Files under a root, sorted, skipping SKIP_DIRS, hidden directories, binaries by suffix and large files."""
    if root.is_file():
        return [root]
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS and not d.startswith(".")
                             and not d.endswith(".egg-info"))
        for name in sorted(filenames):
            p = Path(dirpath) / name
            if p.suffix.lower() in BINARY_SUFFIXES or name.startswith("."):
                continue
            found.append(p)
    return found


def _read_text(path: Path) -> str | None:
    try:
        if path.stat().st_size > MAX_FILE_BYTES or not path.is_file():
            return None
        data = path.read_bytes()
    except OSError:
        return None
    if _is_binary(path, data[:8192]):
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


# ---------------------------------------------------------------------------------------------- the index


class KnowledgeBase:
    """Passages of every file under the roots, ranked by BM25. See the module's docstring."""

    def __init__(self, roots: list[tuple[str, Path]], *, cache_dir: Path | str | None = None) -> None:
        self.roots: list[tuple[str, Path]] = []
        labels: set[str] = set()
        for label, root in roots:
            root = Path(root).expanduser().resolve()
            if not root.exists():
                raise ValueError(f"knowledge root {label!r}: {root} does not exist")
            base, n = label, 2
            while label in labels:  # two folders of one name: knowledge, knowledge~2
                label, n = f"{base}~{n}", n + 1
            labels.add(label)
            self.roots.append((label, root))
        self._files: dict[str, Path] = {}
        self._passages: list[Passage] = []
        corpus: list[list[str]] = []
        for label, root in self.roots:
            files, passages, tokens = self._index_root(label, root, Path(cache_dir) if cache_dir else None)
            self._files.update(files)
            self._passages.extend(passages)
            corpus.extend(tokens)
        self._retriever = None
        if self._passages:
            import bm25s

            self._retriever = bm25s.BM25()
            self._retriever.index(corpus, show_progress=False)
            self._vocab = self._retriever.vocab_dict

    # -- building

    @staticmethod
    def _display(label: str, root: Path, file: Path) -> str:
        if root.is_file():
            return f"{label}/{root.name}"
        return f"{label}/{file.relative_to(root).as_posix()}"

    def _index_root(self, label: str, root: Path,
                    cache_dir: Path | None) -> tuple[dict[str, Path], list[Passage], list[list[str]]]:
        """(display path -> file, passages, their tokens) of one root, from the cache when it is current."""
        files = _walk(root)
        stats = []
        for f in files:
            try:
                st = f.stat()
            except OSError:
                continue
            if st.st_size <= MAX_FILE_BYTES:
                stats.append((f, st.st_mtime_ns, st.st_size))
        cache_file = None
        if cache_dir is not None:
            root_key = hashlib.sha256(f"{label}|{root}".encode()).hexdigest()[:12]
            key = hashlib.sha256(repr((CACHE_VERSION, [(str(f), m, s) for f, m, s in stats])).encode()).hexdigest()[:24]
            prefix = f"kb-{re.sub(r'[^A-Za-z0-9_.-]', '_', label)}-{root_key}-"
            cache_file = cache_dir / f"{prefix}{key}.pkl"
            if cache_file.exists():
                try:
                    with cache_file.open("rb") as fh:
                        cached = pickle.load(fh)
                    if isinstance(cached, tuple) and len(cached) == 3:
                        return cached
                except Exception:  # noqa: BLE001 - a broken cache is rebuilt
                    pass
        table: dict[str, Path] = {}
        passages: list[Passage] = []
        for f, _, _ in stats:
            text = _read_text(f)
            if text is None:
                continue
            display = self._display(label, root, f)
            table[display] = f
            passages.extend(chunk_file(display, text))
        tokens = [tokenize(f"{p.path} {p.title}\n{p.text}") or ["_"] for p in passages]
        if cache_file is not None:
            try:
                cache_file.parent.mkdir(parents=True, exist_ok=True)
                tmp = cache_file.with_suffix(f".{os.getpid()}.tmp")
                with tmp.open("wb") as fh:
                    pickle.dump((table, passages, tokens), fh, protocol=pickle.HIGHEST_PROTOCOL)
                tmp.replace(cache_file)
                for stale in cache_dir.glob(f"{prefix}*.pkl"):  # older states of the same root
                    if stale != cache_file:
                        stale.unlink(missing_ok=True)
            except OSError:
                pass
        return table, passages, tokens

    @classmethod
    def build(cls, *, builtin: bool = True, paths: list[str] | tuple[str, ...] = (),
              packages: list[str] | tuple[str, ...] = (), cache_dir: Path | str | None = None) -> "KnowledgeBase":
        """The builtin documents (<project>/knowledge), user folders or files (label: the folder's name) and
        installed packages' sources (label: the import name). A missing path or package raises ValueError."""
        from avo import PROJECT_ROOT

        roots: list[tuple[str, Path]] = []
        if builtin:
            roots.append(("knowledge", PROJECT_ROOT / "knowledge"))
        for raw in paths or ():
            p = Path(str(raw)).expanduser()
            if not p.exists():
                raise ValueError(f"knowledge.paths: {raw!r} does not exist; give an existing folder or file "
                                 f"(e.g. knowledge.paths=[/path/to/flash-attention]) or remove it")
            p = p.resolve()
            roots.append((p.name if p.is_dir() else p.parent.name or p.name, p))
        for name in packages or ():
            roots.append((str(name), package_dir(str(name))))
        return cls(roots, cache_dir=cache_dir)

    # -- queries

    def files(self) -> list[str]:
        """Display paths of every indexed file, sorted."""
        return sorted(self._files)

    def __len__(self) -> int:
        return len(self._passages)

    def search(self, query: str, k: int = 5) -> list[Passage]:
        """The k passages that rank best for `query` (BM25), best first; [] when no query word is indexed."""
        if not self._retriever or k <= 0:
            return []
        tokens = [t for t in tokenize(query) if t in self._vocab]
        if not tokens:
            return []
        scores = np.asarray(self._retriever.get_scores(tokens), dtype=np.float64)
        k = min(k, len(scores))
        top = np.argpartition(-scores, k - 1)[:k]
        top = sorted(top, key=lambda i: (-scores[i], i))
        return [replace(self._passages[i], score=round(float(scores[i]), 4)) for i in top if scores[i] > 0]

    def read(self, path: str, start: int | None = 1, end: int | None = None) -> str:
        """Lines start..end (1-based, inclusive; end None = to the end) of an indexed file, numbered.
        `path` is a display path, optionally with `:line` or `:start-end`."""
        file = self._files.get(path)
        if file is None:
            m = re.fullmatch(r"(.+?):(\d+)(?:-(\d+))?", path)
            if m and m.group(1) in self._files:
                file = self._files[m.group(1)]
                start = int(m.group(2))
                end = int(m.group(3)) if m.group(3) else (end if end is not None else start + 59)
        if file is None:
            close = difflib.get_close_matches(path, list(self._files), n=5, cutoff=0.4)
            if not close:
                tail = Path(path).name
                close = [f for f in self._files if Path(f).name == tail][:5]
            hint = f"; close: {', '.join(close)}" if close else "; see `avo kb search` or KnowledgeBase.files()"
            raise ValueError(f"no indexed file {path!r}{hint}")
        text = _read_text(file)
        if text is None:
            raise ValueError(f"{path!r} can no longer be read as text")
        lines = text.splitlines()
        start = max(1, int(start or 1))
        end = len(lines) if end is None else min(int(end), len(lines))
        if start > max(end, 1) and lines:
            raise ValueError(f"{path!r} has {len(lines)} lines; start={start} is past its end")
        width = len(str(end))
        return "\n".join(f"{i:>{width}}  {lines[i - 1]}" for i in range(start, end + 1))


def default_cache_dir() -> Path:
    """Where the `avo kb` command caches parsed roots: $XDG_CACHE_HOME/avo/knowledge (~/.cache/avo/knowledge)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "avo" / "knowledge"


def package_dir(name: str) -> Path:
    """The source directory (or single module file) of an installed package, found without importing it."""
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError) as exc:
        spec, why = None, f" ({exc})"
    else:
        why = ""
    if spec is None:
        raise ValueError(f"knowledge.packages: no installed package {name!r}{why}; install it into this "
                         f"environment (pip install {name}) or remove it from knowledge.packages")
    if spec.submodule_search_locations:
        return Path(list(spec.submodule_search_locations)[0])
    if spec.origin and spec.origin not in ("built-in", "frozen") and Path(spec.origin).exists():
        return Path(spec.origin)
    raise ValueError(f"knowledge.packages: {name!r} has no source files to index (origin: {spec.origin})")

"""The `avo` command: tools around runs that compose the same Hydra configs as run.py.

    avo eval <program_dir> [overrides like task=gqa8_causal benchmark=smoke evaluator.trials=3]

prints the evaluator's result JSON; exit code 0 when the program is correct, 1 when not, 2 on a usage error.

    avo bench <program_dir | run_dir[@version]> [overrides] [--reps N] [--out DIR] [--no-baselines]

times the program and the baselines on every configuration of the grid, N full repetitions, and writes a
table (terminal), bench.json and bench.png (like the paper's Figures 3-4); exit codes as for eval.

    avo kb search "<query>" [-k N] [overrides like knowledge.packages=[triton]]
    avo kb read <path> [--start N] [--end M] [overrides]

search the knowledge base (ranked passages as path:line-end  score  title, then their first lines) and read
an indexed file by the path search printed; exit 2 on a usage error (an unknown path or package).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

from avo import PROJECT_ROOT
from avo.errors import UserError

USAGE_ERROR = 2


def compose(overrides: list[str]):
    """The root config with command-line overrides, through Hydra's compose API."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from avo.config import register

    register()
    try:
        with initialize_config_dir(config_dir=str(PROJECT_ROOT / "conf"), version_base="1.3"):
            return hydra_compose(config_name="config", overrides=overrides)
    except (HydraException, OmegaConfBaseException) as exc:
        raise UserError(str(exc)) from None


def cmd_eval(args: argparse.Namespace) -> int:
    from avo.evaluate import evaluate
    from avo.evaluate.settings import EvalSettings
    from avo.program import ProgramError, check_program_dir
    from avo.run import check_grid_fits_device, typed
    from avo.task import Grid, Task

    cfg = compose(args.overrides)
    try:
        program = check_program_dir(Path(args.program_dir))
        task, grid, settings = typed(cfg.task, Task), typed(cfg.benchmark, Grid), typed(cfg.evaluator, EvalSettings)
        task.validate()
        check_grid_fits_device(grid, settings)
    except (ProgramError, ValueError) as exc:
        raise UserError(str(exc)) from None
    result = evaluate(program, task, grid, settings)
    print(json.dumps(result, indent=2))
    return 0 if result.get("correct") else 1


TARGET_HELP = ("a program directory (with kernel.py) or a run directory (with lineage/), optionally with "
               "@vN, @best (default), @latest, @<branch>/vN or @<sha> to pick a committed version")


def resolve_bench_target(target: str, stack: contextlib.ExitStack) -> tuple[Path, str, dict]:
    """(program directory, label for tables and plots, description) of an `avo bench` target.

    A run directory's version is exported (avo.lineage) into a temporary directory that lives as long as
    `stack`. Raises UserError naming what is expected.
    """
    from avo.lineage import Lineage, LineageError

    path, ref = Path(target), None
    if not path.exists() and "@" in target:
        base, _, ref = target.rpartition("@")
        path = Path(base)
        if not ref.strip():
            raise UserError(f"{target!r}: nothing after '@'; {TARGET_HELP}")
    if (path / "lineage").is_dir():
        if not (path / "lineage" / ".git").exists():
            raise UserError(f"{path / 'lineage'} is not a git repository, so {path} is not a run directory; "
                            f"{TARGET_HELP}")
        ref = (ref or "best").strip()
        try:
            with Lineage(path) as lineage:
                version = lineage.resolve(ref)
                dest = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="avo-bench-"))) / "program"
                program = lineage.export(version, dest)
        except LineageError as exc:
            raise UserError(f"{target}: {exc}") from None
        return program, f"{path.resolve().name}@{version.tag}", {
            "kind": "version", "target": target, "run_dir": str(path.resolve()), "ref": ref, "version": version.tag,
            "sha": version.sha, "score": version.score, "task": version.result.get("task"),
            "grid": version.result.get("grid")}
    if ref is not None:
        raise UserError(f"{path} is not a run directory (it has no lineage/), so '@{ref}' selects nothing; "
                        f"{TARGET_HELP}")
    if path.is_dir() and (path / "kernel.py").is_file():
        return path, path.resolve().name, {"kind": "program", "target": target, "program_dir": str(path.resolve())}
    if not path.exists():
        raise UserError(f"{target} does not exist: expected {TARGET_HELP}")
    raise UserError(f"{target} is neither a program directory (no kernel.py) nor a run directory (no lineage/): "
                    f"expected {TARGET_HELP}")


def bench_output_root() -> Path:
    """Where `avo bench` writes by default: <project>/outputs/bench/<task>/<date>_<time>."""
    return PROJECT_ROOT / "outputs" / "bench"


def _bench_out_dir(out: Optional[str], task_name: str) -> Path:
    if out:
        d = Path(out)
    else:
        base = bench_output_root() / task_name / time.strftime("%Y-%m-%d_%H-%M-%S")
        d, n = base, 0
        while d.exists():  # two benches in the same second
            n += 1
            d = base.with_name(f"{base.name}_{n}")
    try:
        d.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=d):
            pass
    except OSError as exc:
        raise UserError(f"cannot write the output directory {d} ({exc.strerror}): choose another with --out DIR") from None
    return d


def cmd_bench(args: argparse.Namespace) -> int:
    import avo.evaluate as evaluator
    from avo.budget import write_json_atomic
    from avo.evaluate.settings import EvalSettings
    from avo.report import bench_summary, bench_table, plot_bench
    from avo.run import check_grid_fits_device, typed
    from avo.task import Grid, Task

    if args.reps < 1:
        raise UserError(f"--reps {args.reps}: give at least 1 repetition")
    bench = getattr(evaluator, "bench", None)
    if bench is None:
        raise UserError("this installation's evaluator (avo.evaluate) has no bench() function")
    with contextlib.ExitStack() as stack:
        program, label, source = resolve_bench_target(args.target, stack)
        overrides = list(args.overrides)
        # A run's version is benchmarked on the task it was evolved for, unless the command names one.
        version_task = source.get("task")
        if (version_task and not any(o.lstrip("+~").startswith("task=") for o in overrides)
                and (PROJECT_ROOT / "conf" / "task" / f"{version_task}.yaml").is_file()):
            overrides.insert(0, f"task={version_task}")
            print(f"avo bench: {label} was evolved for task={version_task}; benchmarking it on that task "
                  f"(name another with task=...)", file=sys.stderr)
        cfg = compose(overrides)
        try:
            task, grid, settings = typed(cfg.task, Task), typed(cfg.benchmark, Grid), typed(cfg.evaluator, EvalSettings)
            task.validate()
            check_grid_fits_device(grid, settings)
        except ValueError as exc:
            raise UserError(str(exc)) from None
        out_dir = _bench_out_dir(args.out, task.name)
        try:
            result = bench(program, task, grid, settings, reps=args.reps,
                           baselines=not args.no_baselines)
        except ValueError as exc:
            raise UserError(str(exc)) from None
    summary = bench_summary(result, program_label=label)
    write_json_atomic(out_dir / "bench.json", json.loads(json.dumps(
        {**result, "source": source, "reps": args.reps, "summary": summary}, default=str)))
    plot = plot_bench(summary, out_dir / "bench.png")
    print(bench_table(summary))
    print(f"Results: {out_dir}\n  bench.json: {out_dir / 'bench.json'}"
          + (f"\n  bench.png: {plot}" if plot else ""))
    if not result.get("correct"):
        print(f"avo bench: the program failed correctness, its TFLOPS are not valid:\n"
              f"{(result.get('error') or 'no error message').strip()}", file=sys.stderr)
        return 1
    return 0


def _kb_options(rest: list[str], *specs: tuple[str, ...]) -> tuple[argparse.Namespace, list[str]]:
    """Options of `avo kb` that may come before or after the Hydra overrides: (options, overrides)."""
    p = argparse.ArgumentParser(prog="avo kb", add_help=False)
    for dest, *flags in specs:
        p.add_argument(*flags, dest=dest, type=int, default=None)
    opts, overrides = p.parse_known_args(rest)
    unknown = [o for o in overrides if o.startswith("-")]
    if unknown:
        raise UserError(f"unrecognized option(s) {' '.join(unknown)}; overrides look like knowledge.packages=[triton]")
    return opts, overrides


def knowledge_base(overrides: list[str]):
    """The KnowledgeBase of the composed config's `knowledge` group (cached under ~/.cache/avo/knowledge)."""
    from omegaconf import OmegaConf

    from avo.knowledge import KnowledgeBase, default_cache_dir

    cfg = compose(overrides)
    kc = OmegaConf.to_container(cfg.knowledge, resolve=True)
    try:
        return KnowledgeBase.build(builtin=bool(kc.get("builtin", True)), paths=list(kc.get("paths") or []),
                                   packages=list(kc.get("packages") or []), cache_dir=default_cache_dir())
    except ValueError as exc:
        raise UserError(str(exc)) from None


def cmd_kb_search(args: argparse.Namespace) -> int:
    opts, overrides = _kb_options(args.rest, ("k", "-k", "--top"))
    k = opts.k if opts.k is not None else args.k
    if k < 1:
        raise UserError(f"-k {k}: give at least 1")
    kb = knowledge_base(overrides)
    hits = kb.search(args.query, k=k)
    if not hits:
        print(f"no passage matches {args.query!r} ({len(kb.files())} files indexed)", file=sys.stderr)
        return 1
    for hit in hits:
        print(f"{hit.path}:{hit.line}-{hit.end_line}  {hit.score:.2f}  {hit.title}")
        lines = hit.text.splitlines()
        for line in lines[:8]:
            print(f"    {line}")
        if len(lines) > 8:
            print(f"    ... ({len(lines) - 8} more lines: avo kb read {hit.path} --start {hit.line} --end {hit.end_line})")
        print()
    return 0


def cmd_kb_read(args: argparse.Namespace) -> int:
    opts, overrides = _kb_options(args.rest, ("start", "--start"), ("end", "--end"))
    start = opts.start if opts.start is not None else args.start
    end = opts.end if opts.end is not None else args.end
    kb = knowledge_base(overrides)
    try:
        print(kb.read(args.path, start=start or 1, end=end))
    except ValueError as exc:
        raise UserError(str(exc)) from None
    return 0


def cmd_kb_files(args: argparse.Namespace) -> int:
    _, overrides = _kb_options(args.rest)
    print("\n".join(knowledge_base(overrides).files()))
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="avo", description="AVO runner tools (runs themselves: python run.py ...)")
    sub = p.add_subparsers(dest="command", required=True)
    ev = sub.add_parser("eval", help="evaluate a program directory and print the result JSON")
    ev.add_argument("program_dir", help="a directory with kernel.py")
    ev.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. task=gqa8_causal benchmark=smoke")
    ev.set_defaults(func=cmd_eval)
    be = sub.add_parser("bench", help="time a program (or a run's version) and the baselines: table, JSON, bar chart",
                        description="The paper's comparison: every configuration of the grid, N full repetitions, "
                                    "mean and std of TFLOPS for the program and each baseline.")
    be.add_argument("target", help=TARGET_HELP)
    be.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. task=gqa8_causal benchmark=quick")
    be.add_argument("--reps", type=int, default=10, help="full repetitions of the grid (default 10)")
    be.add_argument("--out", default=None, help="output directory (default <project>/outputs/bench/<task>/<date>_<time>)")
    be.add_argument("--no-baselines", action="store_true", help="time the program only")
    be.set_defaults(func=cmd_bench)
    kb = sub.add_parser("kb", help="search and read the knowledge base (knowledge/ plus knowledge.paths/packages)",
                        description="The knowledge base the agent consults: the builtin documents of knowledge/, "
                                    "folders in knowledge.paths=[...] and package sources in knowledge.packages=[...].")
    kb_sub = kb.add_subparsers(dest="kb_command", required=True)
    ks = kb_sub.add_parser("search", help="ranked passages for a query: path:line-end  score  title")
    ks.add_argument("query", help='words, e.g. "warp specialization setmaxnreg"')
    ks.add_argument("-k", "--top", dest="k", type=int, default=5, help="how many passages (default 5)")
    ks.add_argument("rest", nargs=argparse.REMAINDER, metavar="overrides",
                    help="Hydra overrides, e.g. knowledge.packages=[triton] knowledge.paths=[/src/flash-attention]")
    ks.set_defaults(func=cmd_kb_search)
    kr = kb_sub.add_parser("read", help="numbered lines of an indexed file (its display path, as search prints it)")
    kr.add_argument("path", help="e.g. knowledge/online_softmax.md or triton/language/core.py (or path:start-end)")
    kr.add_argument("--start", type=int, default=1, help="first line (default 1)")
    kr.add_argument("--end", type=int, default=None, help="last line (default: the end of the file)")
    kr.add_argument("rest", nargs=argparse.REMAINDER, metavar="overrides", help="Hydra overrides, as for search")
    kr.set_defaults(func=cmd_kb_read)
    kf = kb_sub.add_parser("files", help="list the indexed files")
    kf.add_argument("rest", nargs=argparse.REMAINDER, metavar="overrides", help="Hydra overrides, as for search")
    kf.set_defaults(func=cmd_kb_files)
    return p


def main(argv: list[str] | None = None) -> int:
    try:
        args = parser().parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on a usage error already; keep its code
        return int(exc.code or 0)
    try:
        return args.func(args)
    except UserError as exc:
        print(f"avo: error: {exc}", file=sys.stderr)
        return USAGE_ERROR


if __name__ == "__main__":
    sys.exit(main())

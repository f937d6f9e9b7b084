"""The `avo` command: tools around runs that compose the same Hydra configs as run.py.

    avo eval <program_dir> [overrides like task=gqa8_causal benchmark=smoke evaluator.trials=3]

prints the evaluator's result JSON; exit code 0 when the program is correct, 1 when not, 2 on a usage error.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

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
    result = evaluate(program, task, grid, settings, gpu=settings.gpus[0] if settings.gpus else None)
    print(json.dumps(result, indent=2))
    return 0 if result.get("correct") else 1


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="avo", description="AVO runner tools (runs themselves: python run.py ...)")
    sub = p.add_subparsers(dest="command", required=True)
    ev = sub.add_parser("eval", help="evaluate a program directory and print the result JSON")
    ev.add_argument("program_dir", help="a directory with kernel.py")
    ev.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. task=gqa8_causal benchmark=smoke")
    ev.set_defaults(func=cmd_eval)
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

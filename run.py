"""Entry point: `python run.py task=mha_causal budget.days=7`, or `python run.py -m ...` for a sweep.

`python run.py resume=<run_dir>` continues that run: the overrides it was started with (its
.hydra/overrides.yaml) are reused, the run directory is <run_dir>, and overrides given now come last (e.g.
`resume=<run_dir> budget.days=10` extends its budget).
"""
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from avo.config import register
from avo.errors import UserError

register()


def resume_argv(argv: list[str]) -> list[str]:
    """argv with `resume=<dir>` expanded into that run's original overrides and hydra.run.dir=<dir>."""
    resume = [a for a in argv if a.startswith("resume=")]
    if not resume:
        return argv
    run_dir = Path(resume[-1].split("=", 1)[1]).expanduser().resolve()
    overrides_file = run_dir / ".hydra" / "overrides.yaml"
    if not (run_dir / "lineage").is_dir() or not overrides_file.is_file():
        print(f"error: resume={run_dir}: not a run directory (it needs lineage/ and .hydra/overrides.yaml); "
              "give the directory a run printed as 'Results: <dir>'", file=sys.stderr)
        sys.exit(2)
    import yaml

    keys_now = {a.split("=", 1)[0].lstrip("+~") for a in argv if "=" in a}
    original = [str(o) for o in (yaml.safe_load(overrides_file.read_text()) or [])
                if not str(o).startswith(("resume=", "hydra.run.dir=")) and str(o).split("=", 1)[0].lstrip("+~") not in keys_now]
    rest = [a for a in argv if not a.startswith(("resume=", "hydra.run.dir="))]
    return [*original, *rest, f"hydra.run.dir={run_dir}", f"resume={run_dir}"]


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float:
    from avo.run import main as run_main

    try:
        # Returning the best aggregate score lets sweepers (e.g. Optuna) optimise over runs.
        return run_main(cfg)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt as exc:
        print(f"stopped ({exc or 'interrupted'}): the run continues with the same command, or resume=<run_dir>",
              file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    sys.argv = [sys.argv[0], *resume_argv(sys.argv[1:])]
    main()

"""Entry point: `python run.py task=mha_causal budget.days=7`, or `python run.py -m ...` for a sweep."""
import sys

import hydra
from omegaconf import DictConfig

from avo.config import register
from avo.errors import UserError

register()


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float:
    from avo.run import main as run_main

    try:
        # Returning the best aggregate score lets sweepers (e.g. Optuna) optimise over runs.
        return run_main(cfg)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()

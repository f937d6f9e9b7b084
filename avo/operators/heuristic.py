"""The classical operator: mutate the program's CONFIG within its TUNABLES, evaluate, keep if accepted.

No LLM, no network: the offline default, and the baseline every agent must beat under the same budget.
Configurations already tried (in this run, across restarts: they are read from the attempt log) are not
tried again; when every neighbour of the parent has been tried the mutation widens to random points.
"""
from __future__ import annotations

import itertools
import random

from avo.operators import StepContext, StepOutcome
from avo.program import read_tunables, write_config


# Configurations scanned once random draws stop finding untried ones (a bound for huge spaces).
MAX_SCAN = 1_000_000


def config_key(config: dict) -> str:
    return repr(sorted(config.items()))


class HeuristicOperator:
    name = "heuristic"

    def __init__(self, mutations: int = 1, max_draws: int = 200) -> None:
        if mutations < 1:
            raise ValueError(f"agent.mutations={mutations} must be at least 1")
        self.mutations = mutations
        self.max_draws = max_draws

    def propose(self, tunables: dict, config: dict, tried: set[str], rng: random.Random):
        """A configuration not yet tried, or None when every one has been.

        Neighbours first (`mutations` keys changed), then random points of the whole space, then, when the
        space is nearly exhausted, a scan of it, so "nothing left to try" is true when it is said."""
        free = sorted(k for k, values in tunables.items() if len(values) > 1)
        if not free:
            return None
        base = {**{k: v[0] for k, v in tunables.items()}, **config}
        for draw in range(self.max_draws):
            candidate = dict(base)
            if draw < self.max_draws // 2:
                for key in rng.sample(free, min(len(free), self.mutations)):
                    candidate[key] = rng.choice([v for v in tunables[key] if v != base.get(key)] or tunables[key])
            else:
                candidate.update({key: rng.choice(tunables[key]) for key in free})
            if config_key(candidate) not in tried:
                return candidate
        for values in itertools.islice(itertools.product(*(tunables[k] for k in free)), MAX_SCAN):
            candidate = {**base, **dict(zip(free, values))}
            if config_key(candidate) not in tried:
                return candidate
        return None

    def step(self, ctx: StepContext) -> StepOutcome:
        workspace = ctx.workspace / "program"
        ctx.harness.export(ctx.parent, workspace)
        tunables, config = read_tunables(workspace)
        tried = {config_key(a["config"]) for a in ctx.history if isinstance(a.get("config"), dict)}
        tried.add(config_key({**{k: v[0] for k, v in tunables.items()}, **config}))
        candidate = self.propose(tunables, config, tried, ctx.rng)
        if candidate is None:
            return StepOutcome(exhausted=True, note="every CONFIG within TUNABLES has been tried")
        write_config(workspace, candidate)
        changed = {k: v for k, v in candidate.items() if config.get(k) != v}
        message = "heuristic: " + ", ".join(f"{k}={v!r}" for k, v in changed.items())
        verdict = ctx.harness.submit(
            workspace, branch=ctx.branch, parent=ctx.parent, message=message,
            notes=f"Mutated CONFIG from v{ctx.parent.number}: {changed}.", meta={"config": candidate},
        )
        return StepOutcome(committed=verdict.version, attempts=1, note=verdict.reason)

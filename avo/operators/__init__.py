"""The operator protocol: one variation step, from the population's chosen lineage to a committed version.

An operator proposes; the harness judges. Operators call `ctx.harness.submit(...)`, which evaluates the
candidate, applies the acceptance rule, records the attempt and commits when accepted; no operator
commits or scores anything itself.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Protocol

if TYPE_CHECKING:
    from avo.evolve import Harness
    from avo.knowledge import KnowledgeBase
    from avo.lineage import Lineage, Version
    from avo.task import Grid, Task


@dataclass
class StepContext:
    step: int
    branch: str
    parent: "Version"  # the version this step starts from
    best: "Version"  # the best committed version of the branch (the acceptance bar)
    workspace: Path  # an empty directory the operator may use for this step
    harness: "Harness"
    history: list[dict]  # every attempt so far (the attempt log), oldest first
    rng: random.Random
    guidance: str = ""  # the supervisor's directions, if any


@dataclass
class StepOutcome:
    committed: Optional["Version"] = None
    attempts: int = 0
    exhausted: bool = False  # the operator has nothing left to try: the run ends
    note: str = ""
    extra: dict = field(default_factory=dict)


@dataclass
class OperatorDeps:
    """What operators need beyond their own config; built by the composition root."""

    run_dir: Path  # the run directory: operators keep their state under <run_dir>/agent/
    task: "Task"
    grid: "Grid"
    lineage: "Lineage"
    knowledge: Optional["KnowledgeBase"] = None


class Operator(Protocol):
    name: str

    def step(self, ctx: StepContext) -> StepOutcome: ...


def build_operator(agent_cfg, deps: Optional[OperatorDeps] = None) -> Operator:
    """The operator named by `agent.name`, built from its (typed) config and the run's dependencies.

    LLM operators read their API key here (a missing one is a UserError naming the variable to set)."""
    name = agent_cfg.name
    if name == "heuristic":
        from avo.operators.heuristic import HeuristicOperator

        return HeuristicOperator(mutations=agent_cfg.mutations, max_draws=agent_cfg.max_draws)
    if deps is None:
        raise ValueError(f"agent={name!r} needs the run's dependencies (OperatorDeps)")
    if name == "avo":
        from avo.operators.agent.loop import AvoOperator

        return AvoOperator(agent_cfg, deps)
    if name == "single_shot":
        from avo.operators.single_shot import SingleShotOperator

        return SingleShotOperator(agent_cfg, deps)
    if name == "cli":
        from avo.operators.cli_agent import CliOperator

        return CliOperator(agent_cfg, deps)
    raise ValueError(f"agent={name!r} is not an operator: choose agent=heuristic, avo, single_shot or cli")

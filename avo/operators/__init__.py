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
    from avo.lineage import Version


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


class Operator(Protocol):
    name: str

    def step(self, ctx: StepContext) -> StepOutcome: ...


def build_operator(agent_cfg) -> Operator:
    """The operator named by `agent.name`, built from its (typed) config."""
    name = agent_cfg.name
    if name == "heuristic":
        from avo.operators.heuristic import HeuristicOperator

        return HeuristicOperator(mutations=agent_cfg.mutations, max_draws=agent_cfg.max_draws)
    raise ValueError(f"agent={name!r} is not available yet: choose agent=heuristic")

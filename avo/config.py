"""Typed schemas of every config group, registered with Hydra's ConfigStore.

Each YAML option of a group lists its schema first in `defaults` (e.g. `- task_schema`), so a
misspelt key or a wrong type fails at composition with Hydra's own message. The schemas of the parts that
travel to the evaluator (Task, Grid, EvalSettings) are the evaluator's plain dataclasses themselves.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from avo.evaluate.settings import EvalSettings
from avo.task import Grid, Task


@dataclass
class BudgetConfig:
    """When to stop; any limit met ends the run. Wall clock: days + hours + minutes of those given (so
    `budget.days=7` means exactly 7 days); none given means DEFAULT_HOURS. Time counts across restarts."""

    days: Optional[float] = None
    hours: Optional[float] = None
    minutes: Optional[float] = None
    max_versions: Optional[int] = None  # committed versions, not counting the seed
    max_attempts: Optional[int] = None  # evaluated candidates, accepted or not

    DEFAULT_HOURS = 1.0

    @property
    def seconds(self) -> float:
        parts = (self.days, self.hours, self.minutes)
        if all(p is None for p in parts):
            return self.DEFAULT_HOURS * 3600
        d, h, m = (p or 0.0 for p in parts)
        return ((d * 24 + h) * 60 + m) * 60

    def validate(self) -> None:
        for key in ("days", "hours", "minutes"):
            value = getattr(self, key)
            if value is not None and value < 0:
                raise ValueError(f"budget.{key}={value} is negative: give a positive duration, e.g. budget.{key}=1")
        if self.seconds <= 0:
            raise ValueError("the wall-clock budget is zero: give a positive one, e.g. budget.minutes=10 or budget.days=7")
        for key in ("max_versions", "max_attempts"):
            value = getattr(self, key)
            if value is not None and value <= 0:
                raise ValueError(f"budget.{key}={value} must be at least 1 (or null for no limit)")


@dataclass
class SeedConfig:
    name: str = "triton_fa"  # a folder of <project>/seeds/
    dir: Optional[str] = None  # any program directory instead of seeds/<name>


@dataclass
class AgentConfig:
    name: str = MISSING


@dataclass
class HeuristicAgentConfig(AgentConfig):
    """Classical mutation of CONFIG within TUNABLES: no LLM, the offline default and baseline."""

    name: str = "heuristic"
    # How many CONFIG entries one mutation changes (1 = a neighbour; more = a wider jump).
    mutations: int = 1
    # Draws of a not-yet-tried configuration before the step gives up (the space may be exhausted).
    max_draws: int = 200


@dataclass
class PopulationConfig:
    name: str = "single_lineage"
    branch: str = "main"


@dataclass
class EvolveConfig:
    # Acceptance: correct and score >= best committed score * (1 - noise_margin).
    noise_margin: float = 0.01
    seed: int = 0  # random seed of the operator's choices


@dataclass
class LoggerConfig:
    name: str = "none"
    project: str = "avo"
    entity: Optional[str] = None
    # "auto": online when WANDB_API_KEY is set, offline otherwise; "online", "offline" or "disabled".
    mode: str = "auto"
    group: Optional[str] = None  # default: the sweep's name in a multirun, none otherwise
    tags: list[str] = field(default_factory=list)


@dataclass
class Config:
    task: Task = MISSING
    benchmark: Grid = MISSING
    agent: Any = MISSING
    population: PopulationConfig = MISSING
    budget: BudgetConfig = MISSING
    seed: SeedConfig = MISSING
    evaluator: EvalSettings = MISSING
    logger: LoggerConfig = MISSING
    evolve: EvolveConfig = field(default_factory=EvolveConfig)


# (group, schema name) -> schema. Each YAML option of the group names its schema first in `defaults`.
SCHEMAS = {
    ("task", "task_schema"): Task,
    ("benchmark", "benchmark_schema"): Grid,
    ("agent", "heuristic_schema"): HeuristicAgentConfig,
    ("population", "population_schema"): PopulationConfig,
    ("budget", "budget_schema"): BudgetConfig,
    ("seed", "seed_schema"): SeedConfig,
    ("evaluator", "evaluator_schema"): EvalSettings,
    ("logger", "logger_schema"): LoggerConfig,
}


def register() -> None:
    cs = ConfigStore.instance()
    cs.store(name="config_schema", node=Config)
    for (group, name), node in SCHEMAS.items():
        cs.store(group=f"schema/{group}", name=name, node=node)

"""Populations: which lineage (branch) the operator works on next."""
from __future__ import annotations

from typing import Protocol


class Population(Protocol):
    name: str

    def branches(self) -> list[str]: ...

    def select(self, step: int) -> str: ...


def build_population(cfg) -> Population:
    if cfg.name == "single_lineage":
        from avo.population.single import SingleLineage

        return SingleLineage(cfg.branch)
    raise ValueError(f"population={cfg.name!r} is not available yet: choose population=single_lineage")

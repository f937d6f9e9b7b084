"""One line of descent, the paper's setting: every step starts from the best version of one branch."""
from __future__ import annotations


class SingleLineage:
    name = "single_lineage"

    def __init__(self, branch: str = "main") -> None:
        self.branch = branch

    def branches(self) -> list[str]:
        return [self.branch]

    def select(self, step: int) -> str:
        return self.branch

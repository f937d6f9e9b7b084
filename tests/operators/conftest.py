"""An in-process run of the evolution loop with an LLM operator (avo, single_shot, cli) against the fake
server and a fake evaluator.

The fake evaluator scores the program's CONFIG (score = A * B; A == 3 is "incorrect"), so these tests
take milliseconds per evaluation; tests/operators/agent/test_e2e.py runs the real evaluator through run.py.
"""
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import pytest
from toy_program import KERNEL, fake_evaluate

from avo.budget import Budget
from avo.config import (
    AvoAgentConfig,
    CliAgentConfig,
    PricesConfig,
    SingleShotAgentConfig,
)
from avo.evolve import Evolution, Harness
from avo.lineage import Lineage
from avo.operators import OperatorDeps
from avo.operators.agent.loop import AvoOperator
from avo.operators.cli_agent import CliOperator
from avo.operators.single_shot import SingleShotOperator
from avo.population.single import SingleLineage
from avo.task import Grid, GridPoint, Task
from avo.tracking import NullTracker


@dataclass
class AgentRun:
    evolution: Evolution
    operator: object
    lineage: Lineage
    budget: Budget
    run_dir: Path

    def attempts(self):
        return self.lineage.attempts()

    def outcomes(self):
        return [a["outcome"] for a in self.lineage.attempts()]

    def trajectory(self):
        import json

        path = self.run_dir / "agent" / "trajectory.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture
def make_run(tmp_path, llm_server):
    seed = tmp_path / "seed"
    seed.mkdir()
    (seed / "kernel.py").write_text(KERNEL)
    made = []

    def make(*, operator: str = "avo", max_versions: Optional[int] = 1, max_attempts: Optional[int] = None, seconds: float = 120.0,
             max_usd: Optional[float] = None, margin: float = 0.0, run_dir: Optional[Path] = None, **agent) -> AgentRun:
        run_dir = run_dir or tmp_path / "run"
        lineage = Lineage(run_dir)
        made.append(lineage)
        budget = Budget(seconds, max_versions, max_attempts, run_dir / "state" / "budget.json", max_usd=max_usd)
        deps = OperatorDeps(run_dir=run_dir, task=Task(), grid=Grid(name="smoke", configs=[GridPoint(1, 128)]),
                            lineage=lineage, knowledge=agent_knowledge.get("kb"))
        if operator == "cli":
            op = CliOperator(CliAgentConfig(**agent), deps)
        else:
            llm = dict(model="fake-model", base_url=llm_server.url, retry_backoff_s=0.0, max_retries=2, timeout_s=10,
                       prices=agent.pop("prices", PricesConfig()))
            if operator == "avo":
                op = AvoOperator(AvoAgentConfig(**llm, **agent), deps)
            else:
                op = SingleShotOperator(SingleShotAgentConfig(**llm, **agent), deps)
        harness = Harness(lineage=lineage, evaluate=fake_evaluate, tracker=NullTracker(), budget=budget,
                          noise_margin=margin, operator_name=op.name,
                          evaluate_quick=lambda d: fake_evaluate(d, "smoke-quick"))
        evo = Evolution(lineage=lineage, population=SingleLineage(), operator=op, harness=harness, budget=budget,
                        run_dir=run_dir, seed_dir=seed)
        return AgentRun(evo, op, lineage, budget, run_dir)

    agent_knowledge: dict = {}
    make.knowledge = agent_knowledge
    yield make
    for lineage in made:
        lineage.close()

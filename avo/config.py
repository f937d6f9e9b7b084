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
    max_tokens: Optional[int] = None  # LLM tokens (input + cached + output) over the whole run
    max_usd: Optional[float] = None  # LLM cost in USD over the whole run (the agent config's prices)

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
        for key in ("max_versions", "max_attempts", "max_tokens"):
            value = getattr(self, key)
            if value is not None and value <= 0:
                raise ValueError(f"budget.{key}={value} must be at least 1 (or null for no limit)")
        if self.max_usd is not None and self.max_usd <= 0:
            raise ValueError(f"budget.max_usd={self.max_usd} must be positive (or null for no limit)")


@dataclass
class SeedConfig:
    name: str = "triton_fa"  # a folder of <project>/seeds/
    dir: Optional[str] = None  # any program directory instead of seeds/<name>
    # Or a version of another run's lineage (how an evolved MHA kernel is adapted to GQA):
    # seed.from_run=<run_dir> seed.ref=best|latest|vN|<sha>
    from_run: Optional[str] = None
    ref: str = "best"


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
class PricesConfig:
    """USD per million tokens (0: a local server, free)."""

    input: float = 0.0
    cached: float = 0.0
    output: float = 0.0


@dataclass
class LLMAgentConfig(AgentConfig):
    """The model client's settings (avo.llm), shared by every LLM operator. The API key is never in a config:
    it is read from the environment variable `api_key_env` when the run starts (null: no key, local servers)."""

    model: str = "local-model"
    base_url: str = "http://127.0.0.1:8000/v1"
    api_key_env: Optional[str] = None
    temperature: Optional[float] = None  # null: the server's default (reasoning models accept no other)
    max_output_tokens: Optional[int] = 8192
    # The request field for max_output_tokens: OpenAI's "max_completion_tokens", or "max_tokens" (older servers).
    max_tokens_param: str = "max_completion_tokens"
    reasoning_effort: Optional[str] = None  # "low"/"medium"/"high" for models that have it; null: not sent
    context_window: int = 128_000  # tokens; the agent compacts its memory before it fills
    prices: PricesConfig = field(default_factory=PricesConfig)
    timeout_s: float = 600.0  # one request
    max_retries: int = 6  # on 429, 5xx, timeouts and dropped connections, with exponential backoff
    retry_backoff_s: float = 2.0
    retry_max_wait_s: float = 120.0
    # An outage (the server answered before, now cannot be reached: refused, dropped, timed out) is waited out
    # for up to this many seconds (not counted against max_retries or the step's limits), then the run ends cleanly.
    max_outage_s: float = 3600.0
    extra_body: dict[str, Any] = field(default_factory=dict)  # server-specific request fields


@dataclass
class AvoAgentConfig(LLMAgentConfig):
    """The agentic variation operator: one step is a whole agent run (avo.operators.agent)."""

    name: str = "avo"
    # "tools": native tool calling; "text": one fenced ```action block per reply (servers without tool calling).
    protocol: str = "tools"
    # Limits of one variation step; the step also ends when a submission is accepted.
    max_turns: int = 100
    max_evaluations: int = 30  # evaluate + submit calls
    max_step_minutes: float = 180.0
    max_step_tokens: Optional[int] = None
    max_consecutive_errors: int = 5  # malformed replies in a row before the step is given up
    compact_at: float = 0.8  # compact the memory when the conversation reaches this share of context_window
    tool_output_chars: int = 12_000  # tool results are trimmed to this (head and tail, elision counted)
    shell_timeout_s: float = 300.0  # default (and maximum) time of one shell command
    knowledge_results: int = 5
    prompts_dir: Optional[str] = None  # a directory overriding the templates of avo/operators/agent/prompts


@dataclass
class SingleShotAgentConfig(LLMAgentConfig):
    """The fixed pipeline of FunSearch/AlphaEvolve/OpenEvolve: sample, one LLM call, apply, evaluate."""

    name: str = "single_shot"
    inspirations: int = 2  # other versions shown next to the parent (score-weighted sample)
    max_file_chars: int = 40_000  # per file of the parent shown to the model
    prompts_dir: Optional[str] = None


@dataclass
class CliAgentConfig(AgentConfig):
    """Any external coding-agent command as the operator (avo.operators.cli_agent)."""

    name: str = "cli"
    # Run in the workspace (a git worktree of the parent), split like a shell line (no shell). Placeholders:
    # {prompt} (the step's prompt as one argument), {prompt_file} (a file holding it), {workspace}.
    command: str = ""
    stdin: bool = False  # also feed the prompt on standard input
    timeout_s: float = 3600.0  # the whole process group is killed after it
    # Environment variables passed to the command although they look secret (e.g. ANTHROPIC_API_KEY for
    # claude): all others named *KEY*, *TOKEN*, *SECRET* are withheld.
    pass_env: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)  # extra variables for the command
    output_chars: int = 8000  # of the command's output kept in the attempt's notes
    prompts_dir: Optional[str] = None


@dataclass
class PopulationConfig:
    name: str = "single_lineage"
    branch: str = "main"


@dataclass
class EvolveConfig:
    # Acceptance: correct and score >= incumbent score * (1 - noise_margin). null: derived from the measured
    # noise of a paired comparison (2.5 x its RMS, within 0.5%..5%; 1% until measured).
    noise_margin: Optional[float] = None
    # With noise_margin null and interleave on: A/A evaluations (the seed or best timed alongside itself) run
    # before the search to measure that noise; each costs one evaluation of the grid.
    calibration: int = 3
    # Re-time the best version interleaved with each candidate in the same worker, and compare with that.
    interleave: bool = True
    seed: int = 0  # random seed of the operator's choices

    def validate(self) -> None:
        if self.noise_margin is not None and not 0 <= self.noise_margin < 1:
            raise ValueError(f"evolve.noise_margin={self.noise_margin} must be a fraction in [0, 1), e.g. 0.01 "
                             "(or null to derive it from the measured noise)")
        if self.calibration < 0:
            raise ValueError(f"evolve.calibration={self.calibration} must be 0 or more")


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
class OptionalPricesConfig:
    input: Optional[float] = None
    cached: Optional[float] = None
    output: Optional[float] = None


@dataclass
class SupervisorModelConfig:
    """The supervisor's model: each field given overrides the agent's (null: the agent's value)."""

    model: Optional[str] = None
    base_url: Optional[str] = None
    api_key_env: Optional[str] = None
    temperature: Optional[float] = None
    max_output_tokens: Optional[int] = None
    max_tokens_param: Optional[str] = None
    reasoning_effort: Optional[str] = None
    timeout_s: Optional[float] = None
    max_retries: Optional[int] = None
    prices: OptionalPricesConfig = field(default_factory=OptionalPricesConfig)


@dataclass
class SupervisorConfig:
    """The supervisor (avo/supervisor.py): when it intervenes and how. name=none switches it off."""

    name: str = "default"
    enabled: bool = True
    stall_attempts: Optional[int] = 30  # no committed version for this many attempts (null: never)
    stall_hours: Optional[float] = 6.0  # ... or this many hours of running (null: never)
    repeat_failures: Optional[int] = 5  # the last N attempts failed the same way (stage + first error line)
    plateau_versions: Optional[int] = 5  # the last K versions' scores lie within plateau_pct percent
    plateau_pct: float = 1.0
    cooldown_attempts: int = 10  # attempts after an intervention before the next may trigger
    directions: int = 3  # new directions asked of the model
    guidance_steps: int = 10  # steps the directions are shown for (or until a version is committed)
    widen_factor: int = 3  # without a model: mutations x this ...
    widen_steps: int = 10  # ... for this many steps
    max_history: int = 40  # attempts shown to the model
    # The model reviewing the trajectory: fields of the agent's model settings (model, base_url, api_key_env,
    # prices, ...) overriding the agent's (agent=avo/single_shot); with agent=heuristic/cli, give at least model
    # and base_url to use one. Empty with a non-LLM agent: no model, the mutation is widened instead.
    model: SupervisorModelConfig = field(default_factory=SupervisorModelConfig)
    use_model: bool = True  # false: never call a model, always widen


@dataclass
class KnowledgeConfig:
    """What the knowledge base indexes (avo/knowledge.py): the builtin documents of <project>/knowledge,
    user folders or files (a clone of flash-attention, CUTLASS, CUDA docs) and installed packages' sources
    by import name (e.g. triton)."""

    builtin: bool = True
    paths: list[str] = field(default_factory=list)
    packages: list[str] = field(default_factory=list)


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
    knowledge: KnowledgeConfig = MISSING
    supervisor: SupervisorConfig = MISSING
    evolve: EvolveConfig = field(default_factory=EvolveConfig)
    # An existing run directory to continue (its original overrides are reused; see run.py).
    resume: Optional[str] = None


# (group, schema name) -> schema. Each YAML option of the group names its schema first in `defaults`.
SCHEMAS = {
    ("task", "task_schema"): Task,
    ("benchmark", "benchmark_schema"): Grid,
    ("agent", "heuristic_schema"): HeuristicAgentConfig,
    ("agent", "avo_schema"): AvoAgentConfig,
    ("agent", "single_shot_schema"): SingleShotAgentConfig,
    ("agent", "cli_schema"): CliAgentConfig,
    ("population", "population_schema"): PopulationConfig,
    ("budget", "budget_schema"): BudgetConfig,
    ("seed", "seed_schema"): SeedConfig,
    ("evaluator", "evaluator_schema"): EvalSettings,
    ("logger", "logger_schema"): LoggerConfig,
    ("knowledge", "knowledge_schema"): KnowledgeConfig,
    ("supervisor", "supervisor_schema"): SupervisorConfig,
}


def register() -> None:
    cs = ConfigStore.instance()
    cs.store(name="config_schema", node=Config)
    for (group, name), node in SCHEMAS.items():
        cs.store(group=f"schema/{group}", name=name, node=node)

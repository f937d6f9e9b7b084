"""The composition root: turns a composed Hydra config into the parts of a run and runs it.

Only this module (and the `avo` command line, which composes the same configs) knows Hydra; every part
it builds takes plain values. The run directory is Hydra's output directory (or `run_dir=`); a run
started again on a directory that already holds a lineage continues it.
"""
from __future__ import annotations

import logging
import os
import shutil
import signal
import sys
import tempfile
from types import SimpleNamespace
from pathlib import Path
from typing import Any, Optional

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from avo import PROJECT_ROOT
from avo.budget import Budget, read_json, write_json_atomic
from avo.config import BudgetConfig, EvolveConfig
from avo.errors import UserError
from avo.evaluate import evaluate, resolve_device
from avo.evaluate.settings import EvalSettings
from avo.evolve import Evolution, Harness
from avo.lineage import Lineage, LineageError, search_steps
from avo.operators import OperatorDeps, build_operator
from avo.population import build_population
from avo.program import ProgramError, check_program_dir
from avo.report import versions_table, write_reports
from avo.task import Grid, Task
from avo.supervisor import Supervisor, SupervisorSettings
from avo.tracking import NullTracker, Tracker, WandbTracker

log = logging.getLogger("avo")

# Largest sequence length the CPU path will attempt: beyond it the Triton interpreter takes hours.
CPU_MAX_SEQLEN = 1024


def seed_from_run(seed_cfg: Any, run_dir: Path) -> Path:
    """Export `seed.ref` of another run's lineage into <run_dir>/seed (the new run's own copy)."""
    source = Path(seed_cfg.from_run).resolve()
    if not (source / "lineage" / ".git").is_dir():
        raise UserError(f"seed.from_run={seed_cfg.from_run}: {source} is not a run directory (it has no lineage/); "
                        "give the directory a run printed as 'Results: ...'")
    lineage = Lineage(source)
    try:
        version = lineage.resolve(seed_cfg.ref)
    except LineageError as exc:
        raise UserError(f"seed.ref={seed_cfg.ref}: {exc}") from None
    dest = run_dir / "seed"
    shutil.rmtree(dest, ignore_errors=True)
    lineage.export(version, dest)
    log.info("seed: %s of %s (%.4g TFLOPS on %s)", version.tag, source, version.score,
             version.result.get("task", "?"))
    return dest


def seed_directory(seed_cfg: Any, run_dir: Path) -> Path:
    if seed_cfg.from_run:
        return seed_from_run(seed_cfg, run_dir)
    seeds = PROJECT_ROOT / "seeds"
    path = Path(seed_cfg.dir) if seed_cfg.dir else seeds / seed_cfg.name
    if not path.is_dir():
        available = sorted(p.name for p in seeds.iterdir() if (p / "kernel.py").is_file()) if seeds.is_dir() else []
        raise UserError(f"seed {seed_cfg.dir or seed_cfg.name!r} does not exist ({path}). "
                        f"Available seeds: {', '.join(available) or 'none'}; or give any program with seed.dir=<path>.")
    try:
        return check_program_dir(path)
    except ProgramError as exc:
        raise UserError(f"seed {path}: {exc}") from None


def ensure_writable(run_dir: Path) -> None:
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=run_dir):
            pass
    except OSError as exc:
        raise UserError(f"cannot write the run directory {run_dir} ({exc.strerror}): choose a writable one "
                        "with hydra.run.dir=<path>") from None


def check_grid_fits_device(grid: Grid, settings: EvalSettings) -> str:
    device = resolve_device(settings)
    longest = max((p.seqlen for p in grid.configs), default=0)
    if not grid.configs:
        raise UserError(f"benchmark={grid.name} has no configurations")
    if device == "cpu" and longest > CPU_MAX_SEQLEN:
        raise UserError(f"benchmark={grid.name} (sequences up to {longest}) needs a GPU, and none is visible: "
                        "use benchmark=smoke on a CPU")
    return device


def typed(node: DictConfig, cls: type) -> Any:
    """A config node as its plain dataclass (the parts downstream never see OmegaConf)."""
    obj = OmegaConf.to_object(node)
    return obj if isinstance(obj, cls) else cls(**obj)


def hydra_context() -> tuple[Path, Optional[str]]:
    """(run directory, sweep group name or None) from the running Hydra app."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hc = HydraConfig.get()
    group = Path(hc.sweep.dir).name if hc.mode == RunMode.MULTIRUN else None
    return Path(hc.runtime.output_dir).resolve(), group


class OutputDirCheck(Callback):
    """Hydra creates the output directory before the job starts: check it first, with a message naming the fix."""

    def _check(self, path: str, key: str) -> None:
        try:
            ensure_writable(Path(path))
        except UserError as exc:
            print(f"error: {exc}".replace("hydra.run.dir", key), file=sys.stderr)
            sys.exit(2)

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config.hydra.run.dir, "hydra.run.dir")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config.hydra.sweep.dir, "hydra.sweep.dir")


def redact_config(config: Any) -> Any:
    """The config with anything that looks like a key or token replaced (it goes to W&B)."""
    from avo.llm import redact

    return redact(config)


def quick_grid(grid: Grid) -> Grid:
    """The grid's first and last configurations (an agent's quick evaluation), named "<grid>-quick"."""
    configs = list(grid.configs)
    picked = configs[:1] + (configs[-1:] if len(configs) > 1 else [])
    return Grid(name=f"{grid.name}-quick", configs=picked, dtype=grid.dtype, max_heads_kv=grid.max_heads_kv,
                head_dim=grid.head_dim)


def build_knowledge(cfg: DictConfig):
    """The knowledge base of the `knowledge` group, for operators that consult one (agent=avo). Parsed
    folders are cached where `avo kb` caches them (~/.cache/avo/knowledge)."""
    from avo.knowledge import KnowledgeBase, default_cache_dir

    kc = OmegaConf.to_container(cfg.knowledge, resolve=True) if cfg.get("knowledge") is not None else {}
    try:
        return KnowledgeBase.build(builtin=bool(kc.get("builtin", True)), paths=list(kc.get("paths") or []),
                                   packages=list(kc.get("packages") or []), cache_dir=default_cache_dir())
    except ValueError as exc:
        raise UserError(str(exc)) from None


def build_tracker(cfg: DictConfig, run_dir: Path, group: Optional[str], state: dict) -> Tracker:
    if cfg.logger.name == "none" or cfg.logger.mode == "disabled":
        return NullTracker()
    tags = [f"task:{cfg.task.name}", f"agent:{cfg.agent.name}", f"population:{cfg.population.name}",
            f"benchmark:{cfg.benchmark.name}", *cfg.logger.tags]
    return WandbTracker(
        project=cfg.logger.project, entity=cfg.logger.entity, mode=cfg.logger.mode, run_dir=run_dir,
        name=f"{cfg.task.name}-{cfg.agent.name}-{run_dir.name}", group=cfg.logger.group or group, tags=tags,
        config=redact_config(OmegaConf.to_container(cfg, resolve=True)), run_id=state.get("wandb_run_id"),
    )


def build_supervisor(cfg: DictConfig, run_dir: Path, tracker: Tracker, operator: Any) -> Optional[Supervisor]:
    """The supervisor of the `supervisor` group (None when switched off). Its model: the agent's (agent=avo,
    single_shot) with `supervisor.model` overriding fields, or `supervisor.model` alone (model and base_url
    given); none: it widens the mutation instead."""
    sc = cfg.get("supervisor")
    if sc is None or sc.name == "none" or not sc.enabled:
        return None
    sc = OmegaConf.to_container(sc, resolve=True)
    settings = SupervisorSettings(**{k: sc[k] for k in SupervisorSettings.__dataclass_fields__ if k in sc})
    client = None
    model = {k: v for k, v in (sc.get("model") or {}).items() if v is not None and k != "prices"}
    prices = {k: v for k, v in ((sc.get("model") or {}).get("prices") or {}).items() if v is not None}
    base = OmegaConf.to_container(cfg.agent, resolve=True) if cfg.agent.name in ("avo", "single_shot") else {}
    if sc.get("use_model", True) and (base or (model.get("model") and model.get("base_url"))):
        from avo.llm import LLMClient, LLMSettings

        merged = {**base, **model}
        merged["prices"] = SimpleNamespace(**{**(base.get("prices") or {}), **prices})
        client = LLMClient(LLMSettings.from_config(SimpleNamespace(**merged)))
    memory = getattr(operator, "memory", None)
    return Supervisor(settings, run_dir, client=client, tracker=tracker,
                      notes=(lambda: list(memory.notes)) if memory is not None else None)


class StopSignals:
    """SIGINT and SIGTERM end the run cleanly. The first stops it after the step in flight (the budget reports
    the stop, so an agent's step ends at its next turn); a second abandons the step at once
    (KeyboardInterrupt: what is committed stays committed, a half-made attempt is dropped). While the run's
    reports are written (`closing`), signals are only noted."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, budget: Budget) -> None:
        self.budget = budget
        self.closing = False
        self._previous: dict = {}

    def install(self) -> "StopSignals":
        import threading

        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def _handle(self, signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        if self.closing:
            log.warning("%s received: writing the run's reports first", name)
        elif self.budget.stop_reason is None:
            self.budget.stop_reason = f"{name} received"
            log.warning("%s received: stopping after the step in flight (send it again to stop at once)", name)
        else:
            log.warning("%s received again: abandoning the step in flight", name)
            raise KeyboardInterrupt(name)


def main(cfg: DictConfig) -> float:
    """Run (or continue) one evolution; returns the best aggregate score, so sweepers can optimise it."""
    run_dir, group = hydra_context()
    ensure_writable(run_dir)
    try:
        task, grid = typed(cfg.task, Task), typed(cfg.benchmark, Grid)
        task.validate()
        settings = typed(cfg.evaluator, EvalSettings)
        budget_cfg = typed(cfg.budget, BudgetConfig)
        budget_cfg.validate()
        typed(cfg.evolve, EvolveConfig).validate()
        agent_cfg = OmegaConf.to_object(cfg.agent)
        population = build_population(cfg.population)
        device = check_grid_fits_device(grid, settings)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    seed_dir = seed_directory(cfg.seed, run_dir)

    state_path = run_dir / "state" / "run.json"
    state = read_json(state_path)
    if state.get("task") and state["task"] != task.name:
        raise UserError(f"{run_dir} holds a run of task={state['task']}, not task={task.name}: continue it with "
                        f"resume={run_dir} (or task={state['task']}), or choose another run directory")
    budget = Budget(budget_cfg.seconds, budget_cfg.max_versions, budget_cfg.max_attempts,
                    run_dir / "state" / "budget.json", max_tokens=budget_cfg.max_tokens, max_usd=budget_cfg.max_usd)
    lineage = Lineage(run_dir)
    knowledge = build_knowledge(cfg) if cfg.agent.name == "avo" else None
    try:
        operator = build_operator(agent_cfg, OperatorDeps(run_dir=run_dir, task=task, grid=grid, lineage=lineage,
                                                          knowledge=knowledge))
    except ValueError as exc:
        raise UserError(str(exc)) from None
    tracker = build_tracker(cfg, run_dir, group, state)
    if tracker.run_id:
        state["wandb_run_id"] = tracker.run_id
    write_json_atomic(state_path, {**state, "task": task.name, "agent": cfg.agent.name, "device": device})

    harness = Harness(lineage=lineage, tracker=tracker, budget=budget, noise_margin=cfg.evolve.noise_margin,
                      evaluate=lambda d, incumbent=None: evaluate(d, task, grid, settings, incumbent=incumbent),
                      operator_name=operator.name,
                      evaluate_quick=lambda d: evaluate(d, task, quick_grid(grid), settings),
                      interleave=cfg.evolve.interleave, workdir=run_dir / "workspace")
    supervisor = build_supervisor(cfg, run_dir, tracker, operator)
    if supervisor is not None:
        harness.take_note = supervisor.take_note
    evolution = Evolution(lineage=lineage, population=population, operator=operator, harness=harness,
                          budget=budget, run_dir=run_dir, seed_dir=seed_dir, rng_seed=cfg.evolve.seed,
                          supervisor=supervisor, calibration=cfg.evolve.calibration)
    title = f"{task.name} / {grid.name} / {operator.name}"
    harness.on_commit = lambda v: write_reports(run_dir, versions=lineage.versions(v.branch),
                                                attempts=lineage.attempts(), summary=summary(), title=title)

    def summary() -> dict:
        best = evolution.best()
        return {"run_dir": str(run_dir), "task": task.name, "benchmark": grid.name, "agent": operator.name,
                "device": device, "best_version": best.tag if best else None,
                "best_score": best.score if best else 0.0,
                "best_lineage_score": best.lineage_score if best else 0.0,
                "versions": sum(len(lineage.versions(b)) for b in population.branches()),
                # attempts: search steps (what budget.max_attempts counts); evaluations: every attempt line,
                # the seed's and the noise calibrations included.
                "attempts": len(search_steps(lineage.attempts())), "evaluations": len(lineage.attempts()),
                "elapsed_s": budget.elapsed(),
                "wandb_run_id": tracker.run_id, "wandb_group": cfg.logger.group or group}

    log.info("run directory: %s (device %s, task %s, benchmark %s, agent %s)", run_dir, device, task.name,
             grid.name, operator.name)
    signals = StopSignals(budget).install()
    try:
        return evolution.run()
    finally:
        # Whatever ended the run (budget, a signal, an error), the results so far are written and W&B is closed.
        signals.closing = True
        try:
            versions = [v for b in population.branches() for v in lineage.versions(b)]
            paths: dict = {}
            try:
                budget.save()
                paths = write_reports(run_dir, versions=versions, attempts=lineage.attempts(), summary=summary(),
                                      title=title)
                best = evolution.best()
                if best is not None:
                    paths["best program"] = run_dir / "best"
                    shutil.rmtree(paths["best program"], ignore_errors=True)
                    lineage.export(best, paths["best program"])
            except OSError as exc:  # e.g. the disk is full: the lineage and the attempt log hold everything
                log.warning("could not write the run's reports in %s (%s); they are written again when the run continues", run_dir, exc)
            tracker.log_summary(summary(), versions, paths.get("best program"))
            tracker.finish()
            print_results(run_dir, versions, paths, tracker)
        finally:
            signals.restore()


def print_results(run_dir: Path, versions: list, paths: dict, tracker: Tracker) -> None:
    if versions:
        print(versions_table(versions))
    lines = [f"Results: {run_dir}", f"  lineage: {run_dir / 'lineage'} (git -C {run_dir / 'lineage'} log --all --oneline)"]
    lines += [f"  {name}: {path}" for name, path in paths.items()]
    if tracker.run_id:
        offline = "" if os.environ.get("WANDB_API_KEY") else f" (offline; upload: wandb sync {run_dir / 'wandb'}/offline-run-*)"
        lines.append(f"  W&B run {tracker.run_id}: {run_dir / 'wandb'}{offline}")
    print("\n".join(lines))

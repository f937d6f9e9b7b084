"""The evolution loop and the harness that judges every candidate.

Read top to bottom: `Harness.submit` is the acceptance rule (correct, and score at least the best committed
score minus the noise margin); `Evolution.run` evaluates and commits the seed as version 0 when the lineage
is new (or continues an existing one), then asks the population for a branch, the supervisor for guidance
(it may intervene: avo/supervisor.py) and the operator for a step until the budget is spent (or a signal
asked the run to stop: `Budget.stop_reason`), showing progress and writing the run's reports as it goes.
"""
from __future__ import annotations

import logging
import random
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from avo.budget import Budget, format_duration
from avo.errors import UserError
from avo.lineage import Lineage, Version, search_steps
from avo.operators import Operator, StepContext
from avo.population import Population
from avo.program import ProgramError, read_tunables
from avo.supervisor import Supervisor
from avo.tracking import Tracker

log = logging.getLogger(__name__)

Evaluate = Callable[[Path], dict]


# Auto noise margin: NOISE_SIGMAS x RMS of the last NOISE_WINDOW paired differences (the best version timed
# alongside itself, `Harness.calibrate`), within MARGIN_RANGE; DEFAULT_MARGIN until three have been measured.
NOISE_SIGMAS = 2.5
NOISE_WINDOW = 20
MARGIN_RANGE = (0.005, 0.05)
DEFAULT_MARGIN = 0.01


class SeedError(UserError):
    """The seed program fails the evaluator: nothing can evolve from it."""


@dataclass
class Verdict:
    accepted: bool
    reason: str
    result: dict
    record: dict
    version: Optional[Version] = None


def describe_version(v: Version, seed: Optional[Version]) -> str:
    """'v3 457.8 TFLOPS, 1.03x v0 in paired timings': the measured score, and the version's lineage score
    (how it is ranked, see `Harness.submit`) as a speedup over the branch's seed."""
    text = f"v{v.number} {v.score:.4g} TFLOPS"
    if seed is not None and v.number > 0 and seed.lineage_score > 0:
        text += f", {v.lineage_score / seed.lineage_score:.3g}x v0 in paired timings"
    return text


def describe(result: dict) -> str:
    if result.get("correct"):
        return f"{result.get('score', 0.0):.4g} TFLOPS"
    return f"failed at {result.get('stage')}: {(result.get('error') or '').strip().splitlines()[-1:] or ['?']}"[:200]


@dataclass
class Harness:
    """Evaluates, judges, records and commits candidates. Operators propose; only the harness decides."""

    lineage: Lineage
    evaluate: Evaluate
    tracker: Tracker
    budget: Budget
    noise_margin: Optional[float]  # None: derived from the measured noise (see `margin`)
    operator_name: str
    on_commit: Callable[[Version], None] = field(default=lambda v: None)
    # The quick grid (the benchmark grid's first and last configurations), for operators' trial evaluations.
    evaluate_quick: Optional[Evaluate] = None
    # Time the best version interleaved with every submitted candidate (evaluate must take incumbent=).
    interleave: bool = False
    workdir: Optional[Path] = None  # where the incumbent is exported
    # Relative differences between two copies of one program timed alongside each other: the noise of a paired
    # comparison. (Not the incumbent's re-timed score against its committed one: on an H100 that moves by
    # several % with the power drawn by whatever it is paired with, a bias the pairing cancels.)
    noise_samples: list[float] = field(default_factory=list)
    # Text appended to the notes of the next committed version, then cleared (the supervisor's interventions).
    take_note: Callable[[], str] = field(default=lambda: "")

    def export(self, version: Version, dest: Path) -> Path:
        return self.lineage.export(version, dest)

    def margin(self) -> float:
        """The acceptance margin: the configured one, or (noise_margin null) NOISE_SIGMAS times the measured
        noise of a paired comparison, clamped to MARGIN_RANGE."""
        if self.noise_margin is not None:
            return self.noise_margin
        recent = self.noise_samples[-NOISE_WINDOW:]
        if len(recent) < 3:
            return DEFAULT_MARGIN
        rms = (sum(x * x for x in recent) / len(recent)) ** 0.5
        return min(MARGIN_RANGE[1], max(MARGIN_RANGE[0], NOISE_SIGMAS * rms))

    def accepts(self, result: dict, best: Optional[Version]) -> tuple[bool, str]:
        if not result.get("correct"):
            return False, f"incorrect ({describe(result)})"
        score, bar, what = float(result.get("score", 0.0)), (best.score if best else 0.0), "best"
        incumbent = (result.get("incumbent") or {}).get("score")
        if best is not None and incumbent:
            # Timed interleaved with the candidate in the same worker: compare like with like.
            bar, what = float(incumbent), f"incumbent {best.tag} re-timed alongside"
        margin = self.margin()
        threshold = bar * (1.0 - margin)
        verdict = ">=" if score >= threshold else "<"
        return score >= threshold, f"{score:.4g} {verdict} {threshold:.4g} ({what} {bar:.4g} minus {margin:.1%} noise margin)"

    def record(self, program_dir: Path, result: dict, outcome: str, parent: Optional[Version], meta: dict,
                version: Optional[Version] = None) -> dict:
        try:  # the program's CONFIG goes with every attempt (the heuristic never retries one; plots group by it)
            config = read_tunables(program_dir)[1]
        except (ProgramError, OSError):
            config = {}
        record = {
            "config": config,
            "operator": self.operator_name, "outcome": outcome, "parent": parent.tag if parent else None,
            "version": version.tag if version else None, "score": float(result.get("score", 0.0)),
            "correct": bool(result.get("correct")), "stage": result.get("stage"), "error": result.get("error"),
            "elapsed_s": self.budget.elapsed(), "result": result, **meta,
            **({"lineage_score": result["lineage_score"]} if "lineage_score" in result else {}),
        }
        stored = self.lineage.record_attempt(program_dir, record, parent=parent)
        self.budget.save()
        best = self.lineage.best(parent.branch if parent else "main")
        self.tracker.log_attempt(stored, best.lineage_score if best else 0.0)
        return stored

    def trial(self, program_dir: Path, *, quick: bool, parent: Optional[Version], meta: Optional[dict] = None) -> dict:
        """Evaluate a candidate without judging it (an agent's "evaluate" tool): the attempt is recorded with
        outcome "evaluated" and the grid it ran on ("quick" or "full"); returns the stored record (its
        "result" is the evaluator's result). Nothing is committed."""
        use_quick = quick and self.evaluate_quick is not None
        result = (self.evaluate_quick if use_quick else self.evaluate)(program_dir)
        return self.record(program_dir, result, "evaluated", parent, {"grid": "quick" if use_quick else "full",
                                                                       **(meta or {})})

    def incumbent_dir(self, best: Optional[Version]) -> Optional[Path]:
        """The best version exported once (kept until a new best), for interleaved timing."""
        if best is None or self.workdir is None:
            return None
        path = self.workdir / f"incumbent-{best.branch}-v{best.number}"
        if not (path / "kernel.py").is_file():
            for old in self.workdir.glob(f"incumbent-{best.branch}-v*"):
                shutil.rmtree(old, ignore_errors=True)
            self.lineage.export(best, path)
        return path

    def calibrate(self, best: Version) -> Optional[float]:
        """One A/A evaluation: a copy of `best` timed alongside `best` itself, exactly as a candidate would be.
        The relative difference of the two scores is one sample of the noise the acceptance rule faces; it is
        recorded (outcome "calibration", `paired_noise`) and returned (None when the evaluation failed)."""
        incumbent = self.incumbent_dir(best)
        if incumbent is None:
            return None
        self.workdir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="calibration-", dir=self.workdir) as tmp:
            program = self.lineage.export(best, Path(tmp) / "program")
            result = self.evaluate(program, incumbent=incumbent)
            paired = (result.get("incumbent") or {}).get("score")
            sample = float(result["score"]) / float(paired) - 1.0 if result.get("correct") and paired else None
            self.record(program, result, "calibration", best, {} if sample is None else {"paired_noise": sample})
        if sample is not None:
            self.noise_samples.append(sample)
        return sample

    def submit(self, program_dir: Path, *, branch: str, parent: Optional[Version], message: str, notes: str = "",
               meta: Optional[dict] = None) -> Verdict:
        best = self.lineage.best(branch)
        incumbent = self.incumbent_dir(best) if self.interleave else None
        result = self.evaluate(program_dir, incumbent=incumbent) if incumbent else self.evaluate(program_dir)
        meta = dict(meta or {})
        paired = (result.get("incumbent") or {}).get("score")  # the best, timed alongside the candidate
        if best is not None and paired and best.score > 0:
            meta["incumbent_drift"] = paired / best.score - 1.0  # reported, not noise
        accepted, reason = self.accepts(result, best)
        if result.get("correct") and best is not None and paired:
            # Absolute scores of separate evaluations differ by several % with the GPU's power state (what
            # the program was paired with); the ratio of two programs timed alongside each other does not.
            # Chained from the seed, these ratios rank versions (Lineage.best); `score` stays as measured.
            result["lineage_score"] = best.lineage_score * float(result.get("score", 0.0)) / float(paired)
        meta.update(margin=self.margin(), verdict=reason)
        version = None
        if accepted:
            extra = self.take_note()
            if extra:
                notes = f"{notes}\n\n{extra}" if notes else extra
            version = self.lineage.commit(program_dir, result, notes=notes, message=message, branch=branch,
                                          parent=parent)
        record = self.record(program_dir, result, "accepted" if accepted else "rejected", parent, meta, version)
        if version is not None:
            self.tracker.log_version(version, record["n"])
            self.on_commit(version)
        return Verdict(accepted, reason, result, record, version)


@dataclass
class Evolution:
    lineage: Lineage
    population: Population
    operator: Operator
    harness: Harness
    budget: Budget
    run_dir: Path
    seed_dir: Path
    rng_seed: int = 0
    supervisor: Optional[Supervisor] = None
    calibration: int = 0  # paired noise samples to measure before the search (auto margin, interleaved timing)

    def _counts(self) -> tuple[int, int]:
        versions = sum(max(0, len(self.lineage.versions(b)) - 1) for b in self.population.branches())
        attempts = len(search_steps(self.lineage.attempts()))
        return versions, attempts

    def best(self) -> Optional[Version]:
        candidates = [v for b in self.population.branches() if (v := self.lineage.best(b)) is not None]
        return max(candidates, key=lambda v: v.lineage_score, default=None)

    def recover_unrecorded(self, branch: str) -> None:
        """A run killed between committing a version and logging its attempt left a version with no line in
        attempts.jsonl: log it now, from the commit itself (outcome kept, marked recovered)."""
        recorded = {a.get("version") for a in self.lineage.attempts()}
        for version in self.lineage.versions(branch):
            if version.tag in recorded:
                continue
            with tempfile.TemporaryDirectory(prefix="avo-recover-") as tmp:
                program = self.lineage.export(version, Path(tmp) / "program")
                parent = self.lineage.resolve(version.parent) if version.parent else None
                self.harness.record(program, version.result, "seed" if version.number == 0 else "accepted",
                                    parent, {"recovered": True}, version)
            log.warning("recovered the attempt record of %s (the run was stopped before logging it)", version.tag)

    def start(self) -> bool:
        """Commit the evaluated seed as version 0 of every branch that has none (or continue a run); True
        when some branch already had versions (a restarted run)."""
        continued = False
        for branch in self.population.branches():
            if self.lineage.versions(branch):
                self.recover_unrecorded(branch)
                continued = True
                continue
            log.info("evaluating the seed %s for branch %s", self.seed_dir, branch)
            result = self.harness.evaluate(self.seed_dir)
            if not result.get("correct"):
                self.harness.record(self.seed_dir, result, "seed", None, {})
                raise SeedError(
                    f"the seed program {self.seed_dir} fails the evaluator at stage {result.get('stage')}:\n"
                    f"{result.get('error')}\nFix the seed (try `avo eval {self.seed_dir}`) or choose another "
                    "with seed=<name> or seed.dir=<path>.")
            version = self.lineage.commit(self.seed_dir, result, notes="The seed program.", message="seed",
                                          branch=branch)
            record = self.harness.record(self.seed_dir, result, "seed", None, {}, version)
            self.harness.tracker.log_version(version, record["n"])
            log.info("v0 (seed) on %s: %s", branch, describe(result))
        return continued

    def calibrate(self) -> None:
        """Before the search: time the best version alongside itself until `calibration` paired noise samples
        exist (a restarted run keeps those it measured), so the auto margin rests on measured noise."""
        h = self.harness
        if not h.noise_samples:  # a restarted run keeps the noise it measured (the attempt log has every sample)
            h.noise_samples = [a["paired_noise"] for a in self.lineage.attempts() if "paired_noise" in a]
        best = self.best()
        if h.noise_margin is not None or not h.interleave or best is None:
            return
        for i in range(len(h.noise_samples), self.calibration):
            if self.budget.exhausted(*self._counts()) is not None:
                return
            sample = h.calibrate(best)
            log.info("noise calibration %d/%d: %s timed alongside itself: %s", i + 1, self.calibration, best.tag,
                     "evaluation failed" if sample is None else f"{sample:+.2%}")
        if h.noise_samples:
            log.info("acceptance margin %.2f%% (%.1f x RMS of %d paired differences, within %.1f%%..%.0f%%)",
                     100 * h.margin(), NOISE_SIGMAS, min(NOISE_WINDOW, len(h.noise_samples)),
                     100 * MARGIN_RANGE[0], 100 * MARGIN_RANGE[1])

    def describe(self, version: Optional[Version]) -> str:
        if version is None:
            return "none"
        return describe_version(version, next(iter(self.lineage.versions(version.branch)), None))

    def progress(self, step: int, note: str) -> None:
        versions, attempts = self._counts()
        best = self.best()
        spent = f" | {self.budget.tokens} tokens, ${self.budget.usd:.2f}" if self.budget.tokens else ""
        log.info("step %d | %s | versions %d | attempts %d | best %s | %s spent, %s left%s",
                 step, note, versions, attempts, self.describe(best),
                 format_duration(self.budget.elapsed()), format_duration(self.budget.remaining()), spent)

    def run(self) -> float:
        continued = self.start()
        versions, attempts = self._counts()
        if continued:
            log.info("continuing: %d versions and %d attempts already, %s of the budget spent",
                     versions, attempts, format_duration(self.budget.elapsed()))
        self.calibrate()
        rng = random.Random(f"{self.rng_seed}:{attempts}")  # a restart does not replay the same draws
        step = attempts
        stop_reason = None
        while (stop_reason := self.budget.exhausted(*self._counts())) is None:
            step += 1
            branch = self.population.select(step)
            parent = self.lineage.best(branch)
            history = self.lineage.attempts()
            guidance = ""
            if self.supervisor is not None:
                guidance = self.supervisor.before_step(step=step, attempts=history,
                                                       versions=self.lineage.versions(branch),
                                                       elapsed_s=self.budget.elapsed(), operator=self.operator,
                                                       budget=self.budget)
            workspace = self.run_dir / "workspace" / f"step-{step}"
            shutil.rmtree(workspace, ignore_errors=True)
            workspace.mkdir(parents=True)
            started = time.monotonic()
            ctx = StepContext(step=step, branch=branch, parent=parent, best=parent, workspace=workspace,
                              harness=self.harness, history=history, rng=rng, guidance=guidance)
            outcome = self.operator.step(ctx)
            shutil.rmtree(workspace, ignore_errors=True)
            if outcome.exhausted:
                stop_reason = f"the operator has nothing left to try ({outcome.note})"
                break
            verdict = f"v{outcome.committed.number} committed" if outcome.committed else "no commit"
            self.progress(step, f"{verdict} ({outcome.note}, {time.monotonic() - started:.1f}s)")
        self.budget.save()
        best = self.best()
        log.info("stopping: %s. Best: %s.", stop_reason, self.describe(best))
        return best.score if best else 0.0

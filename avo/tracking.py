"""Experiment tracking. `wandb` is imported here and nowhere else.

W&B is optional and never fatal: every call is guarded, a failure becomes one warning and the tracker
goes quiet, the run goes on. Without WANDB_API_KEY the run is logged offline under <run_dir>/wandb and
can be uploaded later with `wandb sync <run_dir>/wandb/offline-run-*`.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Optional, Protocol

log = logging.getLogger(__name__)


class Tracker(Protocol):
    run_id: Optional[str]

    def log_attempt(self, record: dict, best_score: float) -> None: ...

    def log_version(self, version: Any, attempt: int) -> None: ...

    def log_intervention(self, record: dict) -> None: ...

    def log_summary(self, summary: dict, versions: list[Any], best_program: Optional[Path]) -> None: ...

    def finish(self) -> None: ...


class NullTracker:
    run_id: Optional[str] = None

    def log_attempt(self, record: dict, best_score: float) -> None:
        pass

    def log_version(self, version: Any, attempt: int) -> None:
        pass

    def log_intervention(self, record: dict) -> None:
        pass

    def log_summary(self, summary: dict, versions: list[Any], best_program: Optional[Path]) -> None:
        pass

    def finish(self) -> None:
        pass


def _per_config(result: dict, prefix: str) -> dict[str, float]:
    return {f"{prefix}/tflops/{c.get('label', i)}": float(c.get("tflops", 0.0)) for i, c in enumerate(result.get("configs", []))}


def resolve_mode(mode: str) -> str:
    if mode == "auto":
        return "online" if os.environ.get("WANDB_API_KEY") else "offline"
    if mode not in ("online", "offline", "disabled"):
        raise ValueError(f"logger.mode={mode!r}: use auto, online, offline or disabled")
    return mode


class WandbTracker:
    """One W&B run per job. `run_id` is kept in the run's state so a restarted run resumes the same W&B run."""

    def __init__(self, *, project: str, entity: Optional[str], mode: str, run_dir: Path, name: str,
                 group: Optional[str], tags: list[str], config: dict, run_id: Optional[str] = None) -> None:
        self.run = None
        self.run_id = run_id
        try:
            import wandb

            self._wandb = wandb
            os.environ.setdefault("WANDB_SILENT", "true")
            self.run = wandb.init(
                project=project, entity=entity, mode=resolve_mode(mode), dir=str(run_dir), name=name,
                group=group, tags=tags, config=config, id=run_id, resume="allow" if run_id else None,
                settings=wandb.Settings(console="off", init_timeout=120),
            )
            self.run_id = self.run.id
            self.run.define_metric("attempt")
            self.run.define_metric("*", step_metric="attempt")
        except Exception as exc:  # noqa: BLE001 - W&B must never end a run
            self._fail("start", exc)

    def _fail(self, what: str, exc: BaseException) -> None:
        log.warning("W&B %s failed (%s: %s); continuing without W&B. Results stay in the run directory.",
                    what, type(exc).__name__, exc)
        self.run = None

    def log_attempt(self, record: dict, best_score: float) -> None:
        if self.run is None:
            return
        result = record.get("result") or {}
        data = {
            "attempt": record.get("n", 0),
            "attempt/score": float(result.get("score", 0.0)),
            "attempt/correct": int(bool(result.get("correct"))),
            "attempt/accepted": int(record.get("outcome") == "accepted"),
            "attempt/eval_s": float(result.get("elapsed_s", 0.0)),
            "best/score": best_score,
            "elapsed_h": float(record.get("elapsed_s", 0.0)) / 3600,
            **_per_config(result, "attempt"),
            # LLM operators' accounting: tokens and cost of the step so far (avo, single_shot).
            **{f"attempt/{k}": float(record[k]) for k in ("tokens", "cost_usd") if isinstance(record.get(k), (int, float))},
        }
        try:
            self.run.log(data)
        except Exception as exc:  # noqa: BLE001
            self._fail("log", exc)

    def log_version(self, version: Any, attempt: int) -> None:
        if self.run is None:
            return
        try:
            self.run.log({"attempt": attempt, "version": version.number, "version/score": version.score,
                          "version/lineage_score": version.lineage_score, **_per_config(version.result, "version")})
        except Exception as exc:  # noqa: BLE001
            self._fail("log", exc)

    def log_intervention(self, record: dict) -> None:
        """A supervisor intervention: its number and trigger at the attempt it followed (the directions as text)."""
        if self.run is None:
            return
        try:
            self.run.log({"attempt": record.get("attempt", 0), "supervisor/intervention": record.get("intervention", 0),
                          "supervisor/trigger": record.get("trigger", ""),
                          "supervisor/action": record.get("action", ""),
                          "supervisor/directions": "\n".join(record.get("directions") or [])})
        except Exception as exc:  # noqa: BLE001
            self._fail("log", exc)

    def log_summary(self, summary: dict, versions: list[Any], best_program: Optional[Path]) -> None:
        if self.run is None:
            return
        try:
            wandb = self._wandb
            self.run.summary.update(summary)
            table = wandb.Table(columns=["branch", "version", "score", "sha", "message"])
            for v in versions:
                table.add_data(v.branch, v.number, v.score, v.sha[:12], v.message.splitlines()[0] if v.message else "")
            self.run.log({"lineage": table})
            if best_program is not None and Path(best_program).is_dir():
                artifact = wandb.Artifact(f"best-program-{self.run.id}", type="program",
                                          metadata={"score": summary.get("best_score")})
                artifact.add_dir(str(best_program))
                self.run.log_artifact(artifact)
        except Exception as exc:  # noqa: BLE001
            self._fail("summary", exc)

    def finish(self) -> None:
        if self.run is None:
            return
        try:
            self.run.finish()
        except Exception as exc:  # noqa: BLE001
            self._fail("finish", exc)
        self.run = None

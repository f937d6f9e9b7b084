"""Every config file of every group composes; typos and wrong types fail at composition."""

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException, MissingConfigException
from omegaconf import OmegaConf

from avo import PROJECT_ROOT
from avo.config import BudgetConfig, register
from avo.task import Grid, Task, grid_shapes

CONF = PROJECT_ROOT / "conf"
GROUPS = sorted(p.name for p in CONF.iterdir() if p.is_dir() and p.name != "hydra")
OPTIONS = [(g, f.stem) for g in GROUPS for f in sorted((CONF / g).glob("*.yaml"))]


@pytest.fixture(scope="module", autouse=True)
def hydra_conf():
    register()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        yield


def test_every_group_has_options():
    assert {"task", "benchmark", "agent", "population", "budget", "seed", "evaluator", "logger", "experiment"} <= set(GROUPS)
    assert {o for g, o in OPTIONS if g == "task"} == {
        "mha_causal", "mha_noncausal", "gqa4_causal", "gqa4_noncausal", "gqa8_causal", "gqa8_noncausal"}
    assert {o for g, o in OPTIONS if g == "benchmark"} == {"paper", "quick", "smoke"}


@pytest.mark.parametrize("group,option", OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_every_option_composes_and_resolves(group, option):
    cfg = compose("config", overrides=[f"{group}={option}"])
    container = OmegaConf.to_container(cfg, resolve=True)
    assert container["task"]["name"]
    if group in ("task", "benchmark"):
        task, grid = OmegaConf.to_object(cfg.task), OmegaConf.to_object(cfg.benchmark)
        assert isinstance(task, Task) and isinstance(grid, Grid)
        assert grid_shapes(task, grid)


def test_task_head_mapping():
    for name, group in [("mha_causal", 1), ("gqa4_causal", 4), ("gqa8_noncausal", 8)]:
        cfg = compose("config", overrides=[f"task={name}"])
        assert OmegaConf.to_object(cfg.task).group == group


def test_smoke_grid_keeps_gqa_group_and_runs_fp16():
    cfg = compose("config", overrides=["task=gqa8_causal", "benchmark=smoke"])
    shapes = grid_shapes(OmegaConf.to_object(cfg.task), OmegaConf.to_object(cfg.benchmark))
    assert all(s.heads_q // s.heads_kv == 8 and s.dtype == "float16" and s.heads_kv <= 2 for s in shapes)


def test_paper_grid_is_32k_tokens():
    cfg = compose("config", overrides=["benchmark=paper"])
    assert [(p.batch * p.seqlen) for p in cfg.benchmark.configs] == [32768] * 6


@pytest.mark.parametrize("override", ["task.heads_qq=3", "task.heads_q=sixteen", "budget.days=soon",
                                      "agent.mutations=x", "evaluator.timeout=3", "logger.projet=x"])
def test_typos_and_wrong_types_fail_at_composition(override):
    with pytest.raises(ConfigCompositionException):
        compose("config", overrides=[override])


def test_unknown_option_lists_choices():
    with pytest.raises(MissingConfigException, match="mha_noncausal"):
        compose("config", overrides=["task=mha"])


def test_budget_days_seven():
    cfg = compose("config", overrides=["budget.days=7"])
    budget = OmegaConf.to_object(cfg.budget)
    assert isinstance(budget, BudgetConfig)
    assert budget.seconds == 7 * 24 * 3600


def test_budget_defaults_and_validation():
    assert BudgetConfig().seconds == 3600
    assert BudgetConfig(hours=1, minutes=30).seconds == 5400
    for bad in (BudgetConfig(minutes=0), BudgetConfig(days=-1), BudgetConfig(minutes=1, max_attempts=0)):
        with pytest.raises(ValueError):
            bad.validate()


def test_hydra_never_changes_directory_and_runs_under_outputs():
    cfg = compose("config", overrides=["task=gqa4_causal"], return_hydra_config=True)
    assert cfg.hydra.job.chdir is False
    assert cfg.hydra.run.dir.startswith("outputs/gqa4_causal/")
    assert OmegaConf.to_container(cfg.hydra.sweep)["subdir"] == "${hydra.job.num}_${task.name}_${agent.name}"

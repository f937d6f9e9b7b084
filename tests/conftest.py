"""Shared test setup: GPU tests skip without CUDA; W&B never reaches the network."""
import os

import pytest

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.pop("WANDB_API_KEY", None)


@pytest.fixture(autouse=True, scope="session")
def _private_baseline_cache(tmp_path_factory):
    """Baseline figures measured by tests go to a temporary cache, not the project's outputs/."""
    os.environ["AVO_BASELINE_CACHE"] = str(tmp_path_factory.mktemp("cache") / "baselines.json")
    yield


def _cuda_available() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:  # noqa: BLE001 - no torch, no GPU
        return False


def pytest_collection_modifyitems(config, items):
    if _cuda_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


# The fake OpenAI-compatible server (tests/fake_llm.py) as a fixture for every test module.
from fake_llm import llm_server  # noqa: E402,F401

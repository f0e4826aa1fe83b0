"""Shared fixtures: tiny but real data (MetaWorld scripted experts → RLDS through TFDS → store)."""

from __future__ import annotations

import pytest
from entry_points import user_env

TINY_TASK = "metaworld/reach"
TINY_PRIOR_TASKS = ["metaworld/reach", "metaworld/push", "metaworld/button-press"]
TINY_DATA_SETTINGS = dict(
    episodes_per_task=4, max_steps=60, n_target_demos=5, n_target_val=2, target_max_steps=150, workers=1
)
# The same tiny data as Hydra overrides, for tests that run an entry point.
TINY_DATA = [f"data.prior_tasks=[{','.join(TINY_PRIOR_TASKS)}]"] + [
    f"data.{k}={v}" for k, v in TINY_DATA_SETTINGS.items()
]


def tiny_source(cache_dir: str, **overrides):
    from datamil.data.sources import MetaWorldSource

    settings = dict(prior_tasks=TINY_PRIOR_TASKS, cache_dir=cache_dir, **TINY_DATA_SETTINGS)
    return MetaWorldSource(**{**settings, **overrides})


@pytest.fixture(scope="session")
def tiny_cache(tmp_path_factory) -> str:
    """A data cache shared by the whole session; generated once, on first use."""
    return str(tmp_path_factory.mktemp("datamil_cache"))


@pytest.fixture(scope="session")
def tiny_task_data(tiny_cache):
    """(TaskData) 12 prior episodes over 3 tasks, 3 target-train and 2 target-val reach demos."""
    return tiny_source(tiny_cache).load(TINY_TASK)


@pytest.fixture
def cli_env(tiny_cache) -> dict[str, str]:
    """Environment for running the entry points as a user would, against the session's cache."""
    return user_env(tiny_cache)


@pytest.fixture(scope="module")
def shard_data():
    """(prior, target-val, target-train) of a tiny synthetic multitask problem, for the sharded estimators."""
    from datamil.datamodels.synthetic import synthetic_multitask

    prior, target_train, target_val = synthetic_multitask(
        n_tasks=3, episodes_per_task=3, length=6, obs_dim=16, n_target_train=1, n_target_val=2
    )
    return prior, target_val, target_train

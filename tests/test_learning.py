"""Learning-signal check: BC on scripted-expert demos of an easy MetaWorld task actually solves it."""

from __future__ import annotations

import functools

import numpy as np
import pytest

from datamil.data.store import TrajectoryStore
from datamil.policies.build import build_policy
from datamil.policies.gaussian import GaussianPolicy
from datamil.sim_tasks.generate import generate_target_demos
from datamil.sim_tasks.rollout import evaluate_policy
from datamil.training import OptimConfig, train


@pytest.mark.slow
@pytest.mark.sim
def test_bc_on_expert_demos_solves_button_press():
    task, steps = "metaworld/button-press", 1000
    store = TrajectoryStore.from_episodes(generate_target_demos(task, 20, seed=0, max_steps=200))
    policy = build_policy(functools.partial(GaussianPolicy, hidden=(256, 256)), store)
    optim = OptimConfig(lr=1e-3, warmup_steps=50, total_steps=steps)
    train(policy, store, np.arange(store.n_steps), steps, 256, optim, seed=0, progress=False)
    result = evaluate_policy(functools.partial(policy.act, None), task, n_episodes=20, seed=0, max_steps=200)
    assert result.success_rate >= 0.8, result.to_dict()

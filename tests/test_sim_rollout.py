"""Seeded batched evaluation: Wilson interval, expert success, batching/worker invariance, chunks."""

from __future__ import annotations

import json

import numpy as np
import pytest

from datamil.errors import DatamilError
from datamil.sim_tasks.rollout import (
    EvalResult,
    evaluate_policy,
    expert_act_fn,
    measure_env_speed,
    wilson_interval,
)

pytestmark = pytest.mark.sim


@pytest.mark.parametrize(
    ("k", "n", "low", "high"),
    [(5, 10, 0.2366, 0.7634), (0, 10, 0.0, 0.2775), (10, 10, 0.7225, 1.0), (81, 263, 0.2553, 0.3662)],
)
def test_wilson_interval_known_values(k: int, n: int, low: float, high: float) -> None:
    got = wilson_interval(k, n)
    assert got == pytest.approx((low, high), abs=1e-4)


def test_wilson_interval_edges() -> None:
    assert wilson_interval(0, 0) == (0.0, 1.0)
    low, high = wilson_interval(3, 7)
    assert 0 < low < 3 / 7 < high < 1


def test_eval_result_summary_is_plain_json() -> None:
    result = EvalResult("t", 0, np.array([1, 0, 1, 1], bool), np.array([5, 9, 7, 3]), np.ones(4), 24, 0.5)
    summary = json.loads(json.dumps(result.to_dict()))
    assert summary["success_rate"] == 0.75 and summary["n_episodes"] == 4
    assert (summary["ci_low"], summary["ci_high"]) == pytest.approx(wilson_interval(3, 4))
    assert summary["mean_length"] == 6.0 and summary["steps_per_s"] == 48.0
    assert summary["success"] == [True, False, True, True]


@pytest.mark.parametrize("task", ["metaworld/reach", "metaworld/button-press"])
def test_scripted_expert_succeeds(task: str) -> None:
    result = evaluate_policy(expert_act_fn(task), task, n_episodes=8, seed=0, max_steps=200, n_envs=4)
    assert result.success_rate >= 0.8
    assert np.all(result.length[result.success] < 200) and np.all(result.length[~result.success] == 200)
    assert result.env_steps == result.length.sum()
    assert result.interval[0] <= result.success_rate <= result.interval[1]


def _zero_policy(obs: dict[str, np.ndarray]) -> np.ndarray:
    return np.zeros((len(obs["state"]), 4), np.float32)


def test_results_do_not_depend_on_batching_or_workers() -> None:
    task = "metaworld/push"
    act = expert_act_fn(task)
    runs = [
        evaluate_policy(act, task, n_episodes=5, seed=1, max_steps=120, n_envs=n, workers=w)
        for n, w in ((1, 1), (3, 1), (3, 2))
    ]
    for other in runs[1:]:
        assert np.array_equal(runs[0].success, other.success)
        assert np.array_equal(runs[0].length, other.length)
        assert np.allclose(runs[0].returns, other.returns)
    different_seed = evaluate_policy(act, task, n_episodes=5, seed=2, max_steps=120, n_envs=3)
    assert not np.allclose(different_seed.returns, runs[0].returns)


def test_action_chunks_execute_the_first_steps() -> None:
    calls: list[int] = []

    def chunked(obs: dict[str, np.ndarray]) -> np.ndarray:
        calls.append(len(obs["state"]))
        return np.zeros((len(obs["state"]), 8, 4), np.float32)

    result = evaluate_policy(
        chunked, "metaworld/reach", n_episodes=2, max_steps=12, n_envs=2, execute_steps=3
    )
    assert list(result.length) == [12, 12] and not result.success.any()
    assert calls == [2] * 4  # 12 steps / 3 executed per chunk, both envs asked together

    expert = expert_act_fn("metaworld/reach")
    tiled = evaluate_policy(
        lambda obs: np.repeat(expert(obs)[:, None], 4, axis=1), "metaworld/reach", n_episodes=3, max_steps=100
    )
    plain = evaluate_policy(expert, "metaworld/reach", n_episodes=3, max_steps=100)
    assert np.array_equal(tiled.length, plain.length) and np.array_equal(tiled.success, plain.success)


def test_wrong_action_shape_is_a_clear_error() -> None:
    with pytest.raises(DatamilError, match="act_fn returned shape"):
        evaluate_policy(lambda obs: np.zeros(4), "metaworld/reach", n_episodes=2, max_steps=5)


def test_more_envs_than_episodes_and_speed_probe() -> None:
    result = evaluate_policy(_zero_policy, "metaworld/reach", n_episodes=2, max_steps=5, n_envs=10)
    assert result.n_episodes == 2 and result.env_steps == 10 and result.settings["n_envs"] == 2
    assert measure_env_speed("metaworld/reach", steps=50) > 0


def test_more_slots_finishing_than_episodes_left():
    """Two slots truncate on the same step with one episode pending: only one may start it."""
    result = evaluate_policy(
        lambda obs: np.zeros((len(obs["state"]), 4)), "metaworld/reach", 3, 0, 5, n_envs=2
    )
    assert result.n_episodes == 3 and result.length.tolist() == [5, 5, 5]

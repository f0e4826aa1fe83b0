"""Env factory contract: names, errors, seeded start states, shapes, over every registered task."""

from __future__ import annotations

import numpy as np
import pytest

from datamil.errors import UnknownNameError
from datamil.sim_tasks import STREAM_EVAL, STREAM_PRIOR, make_env, make_expert, task_names

pytestmark = pytest.mark.sim


def test_task_names_are_the_50_metaworld_v3_tasks() -> None:
    names = task_names()
    assert len(names) == 50 == len(set(names))
    assert all(n.startswith("metaworld/") and not n.endswith("-v3") for n in names)
    assert {"metaworld/reach", "metaworld/pick-place-wall", "metaworld/button-press"} <= set(names)


@pytest.mark.parametrize("bad", ["metaworld/reachh", "reach", "robosuite/lift", "metaworld/reach-v3"])
def test_unknown_task_lists_valid_names(bad: str) -> None:
    with pytest.raises(UnknownNameError) as err:
        make_env(bad, seed=0)
    assert "metaworld/reach" in str(err.value) and bad in str(err.value)
    with pytest.raises(UnknownNameError):
        make_expert(bad)


@pytest.mark.parametrize("task", task_names())
def test_every_task_resets_by_key_and_steps(task: str) -> None:
    """Episode k replays exactly, in any order; layouts vary across k; state (39,), action (4,)."""
    env = make_env(task, seed=7, max_steps=50)
    first, info = env.reset()
    second, _ = env.reset()
    again, info_again = env.reset(options={"episode": 0})
    assert info["episode"] == 0 == info_again["episode"]
    assert first.shape == (39,) and np.array_equal(first, again)
    assert not np.array_equal(first, second)
    assert np.any(first[-3:] != 0), "the goal must be observable"
    action = make_expert(task)(first)
    assert action.shape == (4,) and action.dtype == np.float32 and np.all(np.abs(action) <= 1)
    obs, reward, terminated, truncated, info = env.step(action)
    assert obs.shape == (39,) and np.isfinite(reward) and not terminated and not truncated
    assert "success" in info
    env.close()


def test_same_key_same_start_state_across_envs_and_seeds() -> None:
    task = "metaworld/pick-place-wall"
    a, b = make_env(task, seed=3), make_env(task, seed=3)
    starts_a = [a.reset()[0] for _ in range(3)]
    starts_b = [b.reset(options={"episode": k})[0] for k in (2, 1, 0)][::-1]
    assert all(np.array_equal(x, y) for x, y in zip(starts_a, starts_b, strict=True))
    other_seed = make_env(task, seed=4).reset()[0]
    other_stream = make_env(task, seed=3, stream=STREAM_PRIOR).reset()[0]
    assert STREAM_PRIOR != STREAM_EVAL
    assert not np.array_equal(other_seed, starts_a[0]) and not np.array_equal(other_stream, starts_a[0])
    # reset(seed=s) starts over at episode 0 of seed s
    assert np.array_equal(a.reset(seed=3)[0], starts_a[0])


def test_trajectories_replay_exactly() -> None:
    task = "metaworld/push"
    env, expert = make_env(task, seed=0), make_expert(task)

    def run() -> np.ndarray:
        obs, _ = env.reset(options={"episode": 5})
        states = [obs]
        for _ in range(40):
            obs = env.step(expert(obs))[0]
            states.append(obs)
        return np.stack(states)

    assert np.array_equal(run(), run())


def test_episodes_truncate_at_max_steps() -> None:
    env = make_env("metaworld/reach", seed=0, max_steps=5)
    env.reset()
    flags = [env.step(np.zeros(4, np.float32))[3] for _ in range(5)]
    assert flags == [False] * 4 + [True]
    env.reset()  # a new episode may start after truncation
    assert env.step(np.zeros(4))[3] is False

"""MetaWorld v3 (MT50) tasks as seeded Gymnasium envs, plus their scripted experts.

MetaWorld's own benchmarks (`metaworld.MT1`) pre-draw 50 layouts with the global NumPy generator
and pick one at random on reset. We draw from the same distribution (uniform over the task's
`_random_reset_space`, with the task's own rejection of too-close object/goal pairs) but from a
generator keyed by (task, seed, stream, episode), so any episode can be replayed on its own, in any
process, in any order. The goal is observable (the MT convention): the 39-d state ends with it.

State (39,): hand xyz, gripper opening, object 1 pose (7), object 2 pose (7), the same 18 values one
step earlier, goal xyz. Action (4,): hand delta xyz and gripper effort, each in [-1, 1].
"""

from __future__ import annotations

import re
import warnings
from typing import Any

import gymnasium as gym
import numpy as np
from metaworld.env_dict import ALL_V3_ENVIRONMENTS
from metaworld.policies import ENV_POLICY_MAP

from datamil.sim_tasks.suites import SUITES, Expert, episode_rng

SUITE = "metaworld"
STATE_DIM = 39
ACTION_DIM = 4


def _v3_name(task: str) -> str:
    return f"{task}-v3"


class MetaWorldEnv(gym.Wrapper):
    """A MetaWorld v3 env whose k-th reset (or `reset(options={"episode": k})`) replays layout k.

    `reset(seed=s)` starts over at episode 0 of seed s. `info["episode"]` says which layout is live.
    Episodes truncate at `max_steps`; MetaWorld never terminates, success is `info["success"]`.
    """

    def __init__(self, task: str, seed: int, stream: int, max_steps: int, **env_kwargs: Any) -> None:
        raw = ALL_V3_ENVIRONMENTS[_v3_name(task)](**env_kwargs)
        raw._partially_observable = False  # goal in the state, as in MetaWorld's MT benchmarks
        del raw.sawyer_observation_space  # cached property: recompute it with the goal bounds
        raw._set_task_called = True
        raw._freeze_rand_vec = False
        raw.seeded_rand_vec = True  # draw layouts from raw.np_random, which we set per episode
        raw.max_path_length = max_steps
        super().__init__(raw)
        self.observation_space = raw.sawyer_observation_space
        self.task = f"{SUITE}/{task}"
        self.seed_value = seed
        self.stream = stream
        self.max_steps = max_steps
        self._next_episode = 0

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """(39,) float64 first state of the next (or the requested) episode."""
        if seed is not None:
            self.seed_value, self._next_episode = int(seed), 0
        episode = int((options or {}).get("episode", self._next_episode))
        self._next_episode = episode + 1
        raw = self.env.unwrapped
        raw.np_random = episode_rng(self.task, self.seed_value, self.stream, episode)
        obs, info = raw.reset()
        return obs, {**info, "episode": episode}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """Clip to the action box first: MetaWorld only clips the position part."""
        return self.env.step(np.clip(np.asarray(action, np.float64), -1.0, 1.0))


class MetaWorldSuite:
    """The 50 MetaWorld v3 tasks under short names like "pick-place-wall"."""

    def task_names(self) -> list[str]:
        return sorted(re.sub(r"-v3$", "", name) for name in ALL_V3_ENVIRONMENTS)

    def make_env(self, task: str, seed: int, stream: int, max_steps: int, **env_kwargs: Any) -> gym.Env:
        return MetaWorldEnv(task, seed, stream, max_steps, **env_kwargs)

    def make_expert(self, task: str) -> Expert:
        policy = ENV_POLICY_MAP[_v3_name(task)]()

        def expert(obs: np.ndarray) -> np.ndarray:
            with warnings.catch_warnings():  # it warns whenever its gains saturate; we clip anyway
                warnings.simplefilter("ignore", UserWarning)
                action = policy.get_action(obs)
            return np.clip(action, -1.0, 1.0).astype(np.float32)

        return expert


SUITES.register(SUITE)(MetaWorldSuite())

"""Task suites (MetaWorld, later others) behind one registry, so a task is a plain name like
"metaworld/pick-place-wall" and every caller builds envs and experts the same way.

A task's episodes are numbered: episode k of (task, seed, stream) always starts from the same
object/goal layout. `stream` keeps purposes apart (evaluation, prior data, target demos), so the
same seed never hands a policy the exact start states it was trained on.
"""

from __future__ import annotations

import importlib
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import gymnasium as gym
import numpy as np

from datamil.errors import UnknownNameError
from datamil.registry import Registry

# Streams of episode start states; any int works, these are the ones the library uses.
STREAM_EVAL = 0
STREAM_PRIOR = 1
STREAM_TARGET = 2

Expert = Callable[[np.ndarray], np.ndarray]  # (D_state,) observation -> (A,) action


class Suite(Protocol):
    """A family of tasks sharing a simulator: lists its tasks, builds envs and scripted experts."""

    def task_names(self) -> list[str]:
        """Short task names inside the suite, e.g. "reach" (without the "suite/" prefix)."""

    def make_env(self, task: str, seed: int, stream: int, max_steps: int, **env_kwargs: object) -> gym.Env:
        """A Gymnasium env whose k-th reset (or reset(options={"episode": k})) is seeded by the key."""

    def make_expert(self, task: str) -> Expert:
        """A stateless scripted expert: one observation (D_state,) -> one action (A,)."""


SUITES: Registry[Suite] = Registry("task suite")
BUILTIN_SUITES = ("datamil.sim_tasks.metaworld_env",)  # modules that register a suite when imported


def _suites() -> Registry[Suite]:
    """The registry with the built-in suites loaded, whichever datamil.sim_tasks module was imported first."""
    for module in BUILTIN_SUITES:
        importlib.import_module(module)
    return SUITES


def split_task(task: str) -> tuple[Suite, str]:
    """("metaworld/reach") -> (the MetaWorld suite, "reach"); unknown names list the valid ones."""
    suites = _suites()
    prefix, _, short = task.partition("/")
    if prefix not in suites or short not in suites.get(prefix).task_names():
        raise UnknownNameError("task", task, task_names())
    return suites.get(prefix), short


def task_names() -> list[str]:
    """Every known task as "suite/task", sorted."""
    suites = _suites()
    return sorted(f"{s}/{t}" for s in suites.names() for t in suites.get(s).task_names())


def make_env(
    task: str, seed: int, stream: int = STREAM_EVAL, max_steps: int = 500, **env_kwargs: object
) -> gym.Env:
    """Env for `task` whose k-th episode starts from a layout fixed by (task, seed, stream, k)."""
    suite, short = split_task(task)
    return suite.make_env(short, seed, stream, max_steps, **env_kwargs)


@dataclass(frozen=True)
class EnvSpec:
    """Which env a slot or a simulated arm holds, `make_env(task, seed, stream, max_steps)`, and the cameras
    rendered from it (a datamil.sim_tasks.render.CameraConfig, or None: no frames). Plain and picklable,
    so a worker process builds the same env from it."""

    task: str
    seed: int
    stream: int
    max_steps: int
    cameras: Any = None

    def make(self) -> gym.Env:
        return make_env(self.task, self.seed, self.stream, max_steps=self.max_steps)


def make_expert(task: str) -> Expert:
    """The suite's scripted expert for `task`: (D_state,) -> (A,) float32."""
    suite, short = split_task(task)
    return suite.make_expert(short)


def episode_rng(task: str, seed: int, stream: int, episode: int, purpose: int = 0) -> np.random.Generator:
    """A generator that is a pure function of its key. purpose 0 draws the episode's start state;
    other purposes (e.g. action noise) get independent draws for the same episode."""
    key = (zlib.crc32(task.encode()), stream, episode, purpose)
    return np.random.default_rng(np.random.SeedSequence(entropy=seed, spawn_key=key))

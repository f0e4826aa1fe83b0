"""MuJoCo tasks: seeded env factories, scripted-expert data generation, batched rollouts.

Tasks are named "suite/task" (e.g. "metaworld/pick-place-wall"); `task_names()` lists them.
"""

from datamil.sim_tasks.suites import (
    STREAM_EVAL,
    STREAM_PRIOR,
    STREAM_TARGET,
    SUITES,
    EnvSpec,
    episode_rng,
    make_env,
    make_expert,
    split_task,
    task_names,
)

__all__ = [
    "STREAM_EVAL",
    "STREAM_PRIOR",
    "STREAM_TARGET",
    "SUITES",
    "EnvSpec",
    "episode_rng",
    "make_env",
    "make_expert",
    "split_task",
    "task_names",
]

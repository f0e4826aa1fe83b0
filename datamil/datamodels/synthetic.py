"""A small synthetic multi-task reaching dataset with planted structure, for estimator checks and
benchmarks before (or without) simulator data.

Each task k has a goal g_k in [-1, 1]^3; the state is [position (3), goal (3), task embedding (8),
distractor noise] padded to `obs_dim`; the scripted expert moves toward the goal, a = clip(2 (g - x)),
plus a task-specific gripper command, and each episode adds action noise sigma in {0.1, 0.5, 1.0}. Tasks
1..n_related have goals near the target task's (index 0): their low-noise episodes should help the
target, noisy episodes and far tasks should not.
"""

from __future__ import annotations

import numpy as np

from datamil.data.schema import Episode, EpisodeMeta
from datamil.data.store import TrajectoryStore

NOISE_LEVELS = (0.1, 0.5, 1.0)


def _task_table(
    n_tasks: int, n_related: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(K, 3) goals, (K,) gripper commands, (K, 8) task embeddings."""
    goals = rng.uniform(-1, 1, (n_tasks, 3))
    goals[1 : 1 + n_related] = goals[0] + rng.normal(0, 0.15, (n_related, 3))
    grippers = rng.choice([-1.0, 1.0], n_tasks)
    grippers[1 : 1 + n_related] = grippers[0]
    return np.clip(goals, -1, 1), grippers, rng.normal(size=(n_tasks, 8))


def _episode(
    task: int,
    table: tuple,
    sigma: float,
    length: int,
    obs_dim: int,
    rng: np.random.Generator,
    episode_id: str,
    dataset: str,
) -> Episode:
    goals, grippers, embeddings = table
    x = rng.uniform(-1, 1, 3)
    states, actions = [], []
    for _ in range(length):
        expert = np.append(np.clip(2.0 * (goals[task] - x), -1, 1), grippers[task])
        action = np.clip(expert + sigma * rng.normal(size=4), -1, 1)
        distractor = rng.normal(0, 0.1, obs_dim - 14)
        states.append(np.concatenate([x, goals[task], embeddings[task], distractor]))
        actions.append(action)
        x = np.clip(x + 0.1 * action[:3] + rng.normal(0, 0.01, 3), -1.5, 1.5)
    final_distance = np.linalg.norm(goals[task] - x)
    meta = EpisodeMeta(episode_id, dataset, f"task{task}", bool(final_distance < 0.2))
    return Episode({"state": np.asarray(states, np.float32)}, np.asarray(actions, np.float32), meta)


def synthetic_multitask(
    n_tasks: int = 10,
    episodes_per_task: int = 10,
    length: int = 60,
    obs_dim: int = 39,
    n_related: int = 2,
    n_target_train: int = 3,
    n_target_val: int = 5,
    seed: int = 0,
) -> tuple[TrajectoryStore, TrajectoryStore, TrajectoryStore]:
    """(prior, target_train, target_val) stores. Target = task 0; the prior holds every task, target
    included, at mixed noise; target-train and target-val are low-noise target demos."""
    rng = np.random.default_rng(seed)
    table = _task_table(n_tasks, n_related, rng)
    prior = [
        _episode(k, table, float(rng.choice(NOISE_LEVELS)), length, obs_dim, rng, f"prior/{k}/{i}", "prior")
        for k in range(n_tasks)
        for i in range(episodes_per_task)
    ]
    target_train = [
        _episode(0, table, 0.1, length, obs_dim, rng, f"target/train/{i}", "target")
        for i in range(n_target_train)
    ]
    target_val = [
        _episode(0, table, 0.1, length, obs_dim, rng, f"target/val/{i}", "target")
        for i in range(n_target_val)
    ]
    return tuple(TrajectoryStore.from_episodes(e) for e in (prior, target_train, target_val))  # type: ignore[return-value]

"""Target splits: target-train (co-trained on) and target-val (held out for the surrogate). Never overlapping."""

from __future__ import annotations

import numpy as np

from datamil.data.store import TrajectoryStore
from datamil.errors import DataError


def split_episode_indices(n_episodes: int, n_val: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded disjoint (train, val) episode indices, each sorted. Both sides must be non-empty."""
    if not 0 < n_val < n_episodes:
        raise DataError(
            f"cannot hold out {n_val} of {n_episodes} target episodes for validation; "
            f"set n_val between 1 and {n_episodes - 1} or provide more target demos"
        )
    order = np.random.default_rng([seed, 0x5EED]).permutation(n_episodes)
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def split_target(store: TrajectoryStore, n_val: int, seed: int) -> tuple[TrajectoryStore, TrajectoryStore]:
    """(target_train, target_val) stores; statistics stay the whole target set's."""
    train, val = split_episode_indices(store.n_episodes, n_val, seed)
    return store.subset(train), store.subset(val)

"""Per-sample scores -> per-trajectory or per-segment scores.

Scores are additive in the data weights (a subset's predicted surrogate is the sum of its samples'
scores), so "sum" is the datamodel-consistent aggregate: it is what dropping a whole trajectory is
predicted to change. "mean" removes the length bias (long episodes are not favored or penalized for
their length alone). Lower = more helpful, as for the per-sample scores.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from datamil.data.store import TrajectoryStore
from datamil.errors import DatamilError

AGGREGATIONS = ("sum", "mean")


def _check(scores: np.ndarray, store: TrajectoryStore, how: str) -> np.ndarray:
    scores = np.asarray(scores, np.float64)
    if scores.shape != (store.n_steps,):
        raise DatamilError(
            f"got {scores.shape} scores for a store of {store.n_steps} steps; score the same store"
        )
    if how not in AGGREGATIONS:
        raise DatamilError(f"unknown aggregation {how!r}; use one of {AGGREGATIONS}")
    if not np.all(np.isfinite(scores)):
        raise DatamilError("scores contain NaN/inf; re-run the estimator (see its smoothness settings)")
    return scores


def per_trajectory(scores: np.ndarray, store: TrajectoryStore, how: str = "sum") -> np.ndarray:
    """(E,) trajectory scores from (N,) per-step scores: sum or mean over each episode's steps."""
    scores = _check(scores, store, how)
    sums = np.bincount(store.episode_of_step, weights=scores, minlength=store.n_episodes)
    return sums if how == "sum" else sums / store.episode_lengths


@dataclass(frozen=True)
class Segments:
    """Fixed-length pieces of episodes: episode index, first step within the episode, length, score. (S,)"""

    episode: np.ndarray
    start: np.ndarray
    length: np.ndarray
    score: np.ndarray

    def step_indices(self, store: TrajectoryStore, which: np.ndarray) -> np.ndarray:
        """Flat step ids of the chosen segments (for training on sub-trajectories)."""
        parts = [store.offsets[self.episode[s]] + self.start[s] + np.arange(self.length[s]) for s in which]
        return np.concatenate(parts) if parts else np.zeros(0, np.int64)


def per_segment(scores: np.ndarray, store: TrajectoryStore, length: int, how: str = "sum") -> Segments:
    """Split every episode into consecutive segments of `length` steps (the last may be shorter)."""
    scores = _check(scores, store, how)
    if length < 1:
        raise DatamilError(f"segment length must be >= 1, got {length}")
    within = np.arange(store.n_steps) - store.offsets[store.episode_of_step]
    seg_in_episode = within // length
    n_per_episode = -(-store.episode_lengths // length)
    first_seg = np.concatenate([[0], np.cumsum(n_per_episode)[:-1]])
    seg_id = first_seg[store.episode_of_step] + seg_in_episode
    n = int(n_per_episode.sum())
    sums = np.bincount(seg_id, weights=scores, minlength=n)
    counts = np.bincount(seg_id, minlength=n)
    episode = np.repeat(np.arange(store.n_episodes), n_per_episode)
    start = (np.arange(n) - first_seg[episode]) * length
    return Segments(episode, start, counts, sums if how == "sum" else sums / counts)

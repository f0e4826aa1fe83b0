"""Deterministic batch samplers and action chunking.

Every sampler answers `indices(step) -> (B,)` flat step ids as a pure function of (seed, step): no hidden
RNG state, so a resumed run, a replayed datamodel run and an estimator's reverse pass all see the same
batches without storing them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np

from datamil.errors import DatamilError

ACTION_CHUNK = "action_chunk"  # (B, H, A) actions [t, t+H), padded with the episode's last action
ACTION_CHUNK_MASK = "action_chunk_mask"  # (B, H) True where the action is real, False where padded

# A stream id that keeps the leftover-slot draw apart from the pools' streams (which are 0, 1, ...).
_REMAINDER_STREAM = 2**31 - 1


def _rng(*key: int) -> np.random.Generator:
    """A generator that is a pure function of the integer key (SeedSequence hashes it)."""
    return np.random.default_rng([k % 2**64 for k in key])


def batch_indices(seed: int, step: int, pool_size: int, batch_size: int, stream: int = 0) -> np.ndarray:
    """(batch_size,) uniform positions in [0, pool_size), with replacement, a function of (seed, step) only.

    `stream` separates independent draws of the same step (one per pool of a mixture).
    """
    if pool_size <= 0:
        raise DatamilError("cannot sample from an empty pool; give the sampler at least one step")
    return _rng(seed, step, stream).integers(0, pool_size, batch_size)


class Sampler(Protocol):
    """What training needs from a sampler: the batch of each step and every step id it can return."""

    batch_size: int
    seed: int

    def indices(self, step: int) -> np.ndarray: ...

    @property
    def pool(self) -> np.ndarray: ...


class UniformSampler:
    """Uniform draws with replacement from one pool of flat step ids."""

    def __init__(self, pool: np.ndarray, batch_size: int, seed: int) -> None:
        self._pool = np.asarray(pool, np.int64)
        if self._pool.ndim != 1 or len(self._pool) == 0:
            raise DatamilError("the training pool is empty; select at least one episode to train on")
        self.batch_size, self.seed = int(batch_size), int(seed)

    @property
    def pool(self) -> np.ndarray:
        return self._pool

    def indices(self, step: int) -> np.ndarray:
        """(B,) flat step ids of `step`'s batch."""
        return self._pool[batch_indices(self.seed, step, len(self._pool), self.batch_size)]


class MixtureSampler:
    """Each batch draws a fixed share of its samples from each pool (robomimic-style weighted co-training).

    Pool i gets floor(r_i * B) samples; the few leftover slots go to pools drawn with probability
    proportional to the fractional parts, so every pool's expected share is exactly r_i / sum(r).
    """

    def __init__(
        self, pools: Sequence[np.ndarray], ratios: Sequence[float], batch_size: int, seed: int
    ) -> None:
        if len(pools) != len(ratios) or not pools:
            raise DatamilError(f"got {len(pools)} pools and {len(ratios)} ratios; give one ratio per pool")
        if any(not r > 0 for r in ratios):
            raise DatamilError(
                f"mixing ratios must be positive, got {list(ratios)}; drop a pool instead of a 0 ratio"
            )
        self.pools = [np.asarray(p, np.int64) for p in pools]
        empty = [i for i, p in enumerate(self.pools) if len(p) == 0]
        if empty:
            raise DatamilError(
                f"pool {empty[0]} is empty but has ratio {ratios[empty[0]]}; select data for it or drop it"
            )
        self.ratios = np.asarray(ratios, np.float64) / float(np.sum(ratios))
        self.batch_size, self.seed = int(batch_size), int(seed)

    @property
    def pool(self) -> np.ndarray:
        return np.unique(np.concatenate(self.pools))

    def counts(self, step: int) -> np.ndarray:
        """(P,) number of samples from each pool at `step`; sums to the batch size."""
        exact = self.ratios * self.batch_size
        counts = np.floor(exact).astype(np.int64)
        left = self.batch_size - int(counts.sum())
        if left > 0:
            frac = exact - counts
            rng = _rng(self.seed, step, _REMAINDER_STREAM)
            extra = rng.choice(len(counts), size=left, replace=False, p=frac / frac.sum())
            counts[extra] += 1
        return counts

    def indices(self, step: int) -> np.ndarray:
        """(B,) flat step ids, pool by pool in pool order."""
        parts = [
            pool[batch_indices(self.seed, step, len(pool), int(n), stream=i)]
            for i, (pool, n) in enumerate(zip(self.pools, self.counts(step), strict=True))
        ]
        return np.concatenate(parts)


def action_chunks(
    actions: np.ndarray, offsets: np.ndarray, step_ids: np.ndarray, horizon: int
) -> tuple[np.ndarray, np.ndarray]:
    """Future actions of each step, for chunked policies.

    actions: (N, A) flat actions; offsets: (E+1,) episode starts; step_ids: (B,) flat ids.
    Returns chunks (B, H, A) = actions [t, t+H) clamped at the episode's last step (padding repeats
    the last action, so a policy that predicts it keeps still), and mask (B, H) True where not padded.
    """
    step_ids = np.asarray(step_ids, np.int64)
    episode = np.searchsorted(offsets, step_ids, side="right") - 1
    last = offsets[episode + 1] - 1  # (B,)
    wanted = step_ids[:, None] + np.arange(horizon)[None, :]  # (B, H)
    mask = wanted <= last[:, None]
    return np.asarray(actions[np.minimum(wanted, last[:, None])]), mask

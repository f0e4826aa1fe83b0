"""Selection strategies: trajectory scores (lower = more helpful) -> selected trajectory indices.

top_k keeps the most helpful `budget` fraction; threshold keeps everything predicted to help (score below
a cutoff); iterative_prune re-estimates on the shrinking pool, dropping the worst and re-admitting
trajectories that look good again (DataMIL's iterative variant), from the whole prior or from a given
starting pool (the `refine` method starts from a retrieval pool).
"""

from __future__ import annotations

import numbers
from collections.abc import Callable

import numpy as np

from datamil.errors import DatamilError


def check_budget(budget: float, setting: str = "budget") -> float:
    """`budget` as a float, or one line naming `setting` when it is no fraction in (0, 1] of the prior.

    Every share of the prior a selection keeps (the budget, refine's keep_share) is checked here, so they
    all fail with the same message shape."""
    if not (isinstance(budget, numbers.Real) and 0.0 < float(budget) <= 1.0):
        raise DatamilError(
            f"selection {setting} {budget!r} must be a fraction in (0, 1] of the prior trajectories, "
            f"e.g. selection.{setting}=0.1 keeps 10%"
        )
    return float(budget)


def top_k(scores: np.ndarray, budget: float) -> np.ndarray:
    """(k,) indices of the k = max(1, round(budget * E)) lowest scores, ties broken by index (stable)."""
    scores = np.asarray(scores, np.float64)
    k = max(1, round(check_budget(budget) * len(scores)))
    return np.sort(np.argsort(scores, kind="stable")[:k])


def threshold(scores: np.ndarray, cutoff: float = 0.0) -> np.ndarray:
    """Indices with score < cutoff (default 0: predicted to lower the surrogate)."""
    return np.flatnonzero(np.asarray(scores, np.float64) < cutoff)


# active episode indices (n,) -> (E,) scores of every episode from a proxy trained on the active ones;
# NaN where the scorer cannot score an episode (e.g. one outside the pool): its last known score is kept.
ScoreFn = Callable[[np.ndarray], np.ndarray]


def iterative_prune(
    score_fn: ScoreFn,
    n_episodes: int,
    rounds: int,
    drop_percentile: float,
    readmit_percentile: float,
    start: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(selected indices, last known score of every episode; NaN for those never scored).

    No defaults here: they live in datamil/configs/method/iterative.yaml, through SelectionConfig.

    Each round re-estimates on the active pool, drops active episodes at/above the `drop_percentile`-th
    percentile of the active scores and re-admits dropped ones whose (latest known) score is at/below the
    `readmit_percentile`-th percentile of the active scores. `start` (indices) is the first active pool
    (None: every episode); an episode outside it is never scored, so it is never admitted.
    """
    if not 0 <= readmit_percentile <= drop_percentile <= 100:
        raise DatamilError("need 0 <= readmit_percentile <= drop_percentile <= 100")
    active = np.ones(n_episodes, bool)
    if start is not None:
        if len(start) == 0:
            raise DatamilError("iterative_prune's starting pool is empty; start from at least one episode")
        active[:] = False
        active[np.asarray(start)] = True
    last = np.full(n_episodes, np.nan)
    for _ in range(rounds):
        idx = np.flatnonzero(active)
        new = np.asarray(score_fn(idx), np.float64)
        if new.shape != (n_episodes,):
            raise DatamilError(
                f"iterative_prune's score function returned shape {new.shape}, expected ({n_episodes},)"
            )
        last = np.where(np.isfinite(new), new, last)
        if not np.all(np.isfinite(last[idx])):
            raise DatamilError(
                "the score function left active episodes unscored (NaN); it must score the pool"
            )
        hi, lo = np.percentile(last[idx], [drop_percentile, readmit_percentile])
        drop = idx[last[idx] >= hi]
        readmit = np.flatnonzero(~active & (last <= lo))
        if len(drop) >= len(idx):
            drop = drop[:-1]  # never empty the pool
        active[drop], active[readmit] = False, True
    return np.flatnonzero(active), last

"""TRAK through the traker package: it agrees in sign with the exact metagradient on a toy, and its
step subsampling keeps trajectory sums."""

import numpy as np
import pytest
from scipy.stats import spearmanr
from test_estimators import TinyGelu, make_store, proxy

from datamil.datamodels import ESTIMATORS
from datamil.datamodels.base import prepare
from datamil.datamodels.surrogate import sampled_rows, spread_to_steps

pytest.importorskip("trak")


@pytest.fixture(scope="module")
def toy():
    return make_store(24, 6, 0, "prior"), make_store(2, 6, 1, "val")


def per_episode(scores: np.ndarray, store) -> np.ndarray:
    return np.bincount(store.episode_of_step, weights=scores, minlength=store.n_episodes)


def test_trak_ranks_trajectories_like_the_exact_metagradient(toy):
    prior, val = toy
    cfg = proxy(steps=60, batch=16)  # projection (16) well below the 50 parameters and 144 samples
    trak = ESTIMATORS.get("trak")(TinyGelu(), prior, val, 0, proxy=cfg, n_models=3, proj_dim=16).scores
    exact = ESTIMATORS.get("metagrad")(
        TinyGelu(), prior, val, 0, proxy=cfg, include_target_train=False
    ).scores
    assert trak.shape == (prior.n_steps,) and np.all(np.isfinite(trak))
    assert spearmanr(per_episode(trak, prior), per_episode(exact, prior)).statistic > 0.5


def test_subsampled_steps_keep_trajectory_sums(toy):
    prior, val = toy
    pool, _ = prepare(TinyGelu(), prior, val)
    rows = sampled_rows(pool, 2)
    assert len(rows) == 2 * prior.n_episodes and set(pool.episode[rows]) == set(range(prior.n_episodes))
    row_scores = np.arange(len(rows), dtype=float)
    steps = spread_to_steps(pool, rows, row_scores)
    expected = np.bincount(pool.episode[rows], weights=row_scores) * prior.episode_lengths / 2
    assert np.allclose(per_episode(steps, prior), expected)
    assert np.array_equal(sampled_rows(pool, None), np.arange(prior.n_steps))

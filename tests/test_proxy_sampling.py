"""Proxy batch orders (every sample counts at full size) and the noise ceiling of an LDS truth."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from datamil.datamodels.lds import attainable_lds, noise_ceiling, seeds_for_reliability, truth_seeds
from datamil.datamodels.proxy import BatchOrder, ProxyConfig, fit_to_pool, resolve_sampling
from datamil.errors import DatamilError
from datamil.training import batch_indices

EPISODE = np.repeat(np.arange(7), [5, 1, 9, 3, 4, 8, 2])  # 7 trajectories of unequal length, 32 rows


def drawn(order: BatchOrder, steps: int) -> np.ndarray:
    return torch.cat([order(t) for t in range(steps)]).numpy()


def test_trajectory_rounds_visit_every_trajectory_once_per_round() -> None:
    order = BatchOrder(EPISODE, np.arange(len(EPISODE)), 3, seed=1, sampling="trajectory")
    rows = drawn(order, 14)  # 42 draws = 6 rounds of 7 trajectories
    for r in range(6):
        assert sorted(EPISODE[rows[7 * r : 7 * (r + 1)]]) == list(range(7))
    assert len(set(rows)) > 7  # a fresh step of each trajectory per round, not the same one


def test_epoch_visits_every_row_once_per_epoch_and_respects_subsets() -> None:
    rows = np.flatnonzero(EPISODE != 2)  # a subset without trajectory 2
    order = BatchOrder(EPISODE, rows, 4, seed=0, sampling="epoch")
    first_two_epochs = drawn(order, 2 * len(rows) // 4 + 1)[: 2 * len(rows)]
    assert sorted(first_two_epochs[: len(rows)]) == sorted(rows)
    assert sorted(first_two_epochs[len(rows) :]) == sorted(rows)
    assert not np.array_equal(first_two_epochs[: len(rows)], first_two_epochs[len(rows) :])


def test_batches_are_a_function_of_seed_and_step_only() -> None:
    for sampling in ("uniform", "epoch", "trajectory"):
        a = BatchOrder(EPISODE, np.arange(32), 5, seed=3, sampling=sampling)
        b = BatchOrder(EPISODE, np.arange(32), 5, seed=3, sampling=sampling)
        assert torch.equal(a(11), b(11)) and torch.equal(a(4), b(4))  # b asked out of order
        assert not torch.equal(a(11), BatchOrder(EPISODE, np.arange(32), 5, 4, sampling)(11))


def test_uniform_order_is_unchanged_from_plain_uniform_draws() -> None:
    order = BatchOrder(EPISODE, np.arange(32), 8, seed=2, sampling="uniform")
    assert np.array_equal(order(5).numpy(), batch_indices(2, 5, 32, 8))


def test_auto_covers_the_pool_with_a_larger_batch_only_when_uniform_draws_cannot() -> None:
    cfg = ProxyConfig(batch_size=256).with_steps(400)
    assert resolve_sampling(cfg, 20_000) == "uniform"  # the embedded default: ~5 draws per row
    assert fit_to_pool(cfg, 20_000) == replace(cfg, sampling="uniform")  # its batch stays
    assert resolve_sampling(cfg, 1_000_000) == "epoch"  # the full prior: 0.1 draws per row
    full = fit_to_pool(cfg, 1_006_036)  # the full prior + target-train
    assert (full.sampling, full.batch_size, full.steps) == ("epoch", 2516, 400)
    assert full.steps * full.batch_size >= 1_006_036 > full.steps * (full.batch_size - 1)
    covered = fit_to_pool(replace(cfg, sampling="cover"), 20_000)  # "cover" walks permutations even there
    assert (covered.sampling, covered.batch_size) == ("epoch", 256)
    for explicit in ("uniform", "epoch", "trajectory"):  # what is named is what runs, at the named batch
        assert fit_to_pool(replace(cfg, sampling=explicit), 1_000_000) == replace(cfg, sampling=explicit)
    earlier = replace(cfg, sampling="auto_trajectory")  # the committed benchmark runs' rule
    assert fit_to_pool(earlier, 1_000_000) == earlier
    assert [resolve_sampling(earlier, n) for n in (20_000, 1_000_000)] == ["uniform", "trajectory"]
    with pytest.raises(DatamilError, match="sampling"):
        ProxyConfig(sampling="stratified")
    with pytest.raises(DatamilError, match="target_share"):
        ProxyConfig(target_share=1.0)  # a batch of target-train only would score no prior sample


def test_noise_ceiling_separates_signal_from_seed_noise() -> None:
    rng = np.random.default_rng(0)
    signal = rng.normal(size=200)
    noisy = signal + rng.normal(scale=1.0, size=(6, 200))  # one-seed agreement ~0.5
    ceiling = noise_ceiling(noisy)
    assert 0.35 < ceiling.single_seed < 0.65
    assert ceiling.reliability > 0.8 > ceiling.single_seed  # six seeds average most noise away
    clean = noise_ceiling(signal + rng.normal(scale=0.01, size=(2, 200)))
    assert clean.single_seed > 0.99
    with pytest.raises(DatamilError, match="2 truth seeds"):
        noise_ceiling(noisy[:1])


def test_the_signal_itself_scores_sqrt_reliability_against_a_noisy_mean_truth() -> None:
    """A perfect estimator (the signal) is attenuated by the truth's noise to sqrt(reliability): above the
    reliability, so the ceiling alone understates what an estimator can reach."""
    rng = np.random.default_rng(1)
    signal = rng.normal(size=4000)
    truths = signal + rng.normal(scale=2.0, size=(6, 4000))  # one seed ~0.2, six seeds ~0.6
    ceiling = noise_ceiling(truths)
    perfect = spearmanr(signal, truths.mean(0)).statistic
    assert perfect == pytest.approx(attainable_lds(ceiling.reliability), abs=0.03)
    assert perfect > ceiling.reliability + 0.1
    assert attainable_lds(-0.2) == 0.0 and attainable_lds(1.0) == 1.0


def test_seeds_for_reliability_is_the_spearman_brown_inverse() -> None:
    k = seeds_for_reliability(0.56)
    r = 0.56
    assert k * r / (1 + (k - 1) * r) >= 0.85 > (k - 1) * r / (1 + (k - 2) * r)
    assert seeds_for_reliability(0.99) == 2
    assert 0 not in truth_seeds(0, 4) and len(set(truth_seeds(0, 4))) == 4

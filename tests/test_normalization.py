"""Per-dataset normalization: the maps and their inverse, the data pipeline, and acting in raw units."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import rlds_fixtures as fx

from datamil.checkpoint import load_policy, save_policy
from datamil.data.normalization import (
    ActingNormalization,
    NormStats,
    normalize_array,
    unnormalize_array,
)
from datamil.data.sources import TaskData, normalize_task_data
from datamil.data.store import TrajectoryStore
from datamil.errors import DataError
from datamil.policies.base import DATA_NORMALIZATION
from datamil.policies.build import build_policy
from datamil.policies.mlp import MLPPolicy
from datamil.training import OptimConfig
from datamil.training.cotraining import build_mixture, cotrain_on_selection


def scaled_store(scale: float, n: int, seed: int, dataset: str) -> TrajectoryStore:
    """Episodes whose actions live in [-scale, scale] (metres vs. a [-1, 1] box), with a 5-d state."""
    episodes = fx.make_episodes(n, 20, 5, 4, False, seed, dataset)
    for e in episodes:
        e.actions = (e.actions * scale).astype(np.float32)
    return TrajectoryStore.from_episodes(episodes)


@pytest.mark.parametrize("mode", ["q01_q99", "mean_std"])
def test_normalize_then_unnormalize_is_the_identity_inside_the_bounds(mode):
    x = np.random.default_rng(0).normal(size=(500, 3)) * [0.01, 1.0, 30.0]
    stats = NormStats.of(x)
    y = normalize_array(x, stats, mode)
    inside = np.all((x >= stats.q01) & (x <= stats.q99), axis=1) if mode == "q01_q99" else slice(None)
    np.testing.assert_allclose(unnormalize_array(y, stats, mode)[inside], x[inside], rtol=1e-4, atol=1e-6)
    if mode == "q01_q99":  # every dimension spans [-1, 1] whatever its units
        assert y.min() == -1 and y.max() == 1
        np.testing.assert_allclose(np.quantile(y, [0.01, 0.99], axis=0), [[-1] * 3, [1] * 3], atol=3e-3)
    else:
        np.testing.assert_allclose(y.std(0), 1, atol=1e-4)


def test_a_constant_dimension_maps_to_zero_and_back():
    x = np.stack([np.linspace(-1, 1, 50), np.full(50, 0.3)], axis=1)
    stats = NormStats.of(x)
    for mode in ("q01_q99", "mean_std"):
        y = normalize_array(x, stats, mode)
        assert np.all(y[:, 1] == 0)  # not -1: a padded rotation must not read as an extreme
        np.testing.assert_allclose(unnormalize_array(y, stats, mode)[:, 1], 0.3, rtol=1e-6)


def test_none_is_the_identity_and_a_bad_mode_is_one_line():
    x = np.ones((3, 2), np.float32)
    stats = NormStats.of(x)
    assert normalize_array(x, stats, "none") is x and unnormalize_array(x, stats, "none") is x
    with pytest.raises(DataError, match="^unknown normalization 'minmax'; set data.normalization to one of"):
        normalize_array(x, stats, "minmax")


def test_pipeline_normalizes_each_prior_dataset_by_its_own_statistics():
    prior = TrajectoryStore.concat([scaled_store(0.01, 4, 0, "metres"), scaled_store(1.0, 4, 1, "box")])
    target = scaled_store(0.05, 5, 2, "target")
    data = TaskData("t", prior, target.subset([0, 1, 2]), target.subset([3, 4]))
    assert normalize_task_data(data, "none") is data
    normed = normalize_task_data(data, "q01_q99", prior.episodes.dataset)
    actions, labels = normed.prior.arrays["action"], np.asarray(prior.episodes.dataset)
    for name in ("metres", "box"):  # each dataset fills [-1, 1], so neither dominates the loss
        steps = normed.prior.step_indices(np.flatnonzero(labels == name))
        assert actions[steps].min() == -1 and actions[steps].max() == 1
    # target-val is normalized with target-train's statistics, and the acting map inverts them
    acting = normed.normalization
    raw_val = data.target_val.arrays["action"]
    np.testing.assert_allclose(
        normed.target_val.arrays["action"], normalize_array(raw_val, acting.action, "q01_q99")
    )
    np.testing.assert_allclose(acting.action.q01, NormStats.of(data.target_train.arrays["action"]).q01)
    assert normed.summary()["normalization"] == "q01_q99" and "normalization" not in data.summary()


def test_a_policy_trained_on_normalized_data_acts_in_raw_units_after_loading(tmp_path):
    target = scaled_store(0.02, 5, 2, "target")
    data = normalize_task_data(
        TaskData("t", target, target.subset([0, 1, 2]), target.subset([3, 4])), "q01_q99"
    )
    mixture = build_mixture(data.target_train, data.prior, [], 1.0, 1.0, 8, 0)
    policy = build_policy(lambda **kw: MLPPolicy(**kw, hidden=(8,)), mixture.store)
    raw_obs = {"state": np.asarray(target.arrays["obs/state"][:4])}
    normalized_out = policy.act(None, data.normalization.observations(raw_obs))  # no normalization attached
    policy.data_normalization = data.normalization
    acted = policy.act(None, raw_obs)
    np.testing.assert_allclose(acted, data.normalization.actions(normalized_out), rtol=1e-6)
    assert np.all(np.abs(acted) <= np.abs(target.arrays["action"]).max() + 1e-6)  # metres, not [-1, 1]
    loaded = load_policy(save_policy(tmp_path / "p.pt", policy)).policy
    np.testing.assert_array_equal(loaded.act(None, raw_obs), acted)
    again = ActingNormalization.from_dict(data.normalization.to_dict())
    np.testing.assert_array_equal(again.action.q99, data.normalization.action.q99)


def test_cotraining_on_normalized_data_saves_the_acting_normalization(tmp_path):
    """cotrain_on_selection (the co-train app's and the benchmarks' one path) writes the data's
    normalization into the checkpoint: without it the loaded policy would act on raw states in
    normalized units, which is how a benchmark once scored 0%."""
    prior = scaled_store(1.0, 4, 0, "box")
    target = scaled_store(0.02, 5, 2, "target")
    data = normalize_task_data(
        TaskData("t", prior, target.subset([0, 1, 2]), target.subset([3, 4])), "q01_q99"
    )
    factory = functools.partial(MLPPolicy, hidden=(8,))
    ids = list(prior.episodes.episode_id[:2])
    path, _, mixture = cotrain_on_selection(
        factory,
        data,
        ids,
        1.0,
        1.0,
        8,
        5,
        OptimConfig(total_steps=5),
        0,
        tmp_path,
        {},
        checkpoint_every=10**9,
    )
    assert mixture.n_prior_episodes == 2
    loaded = load_policy(path).policy
    saved = getattr(loaded, DATA_NORMALIZATION)
    np.testing.assert_array_equal(saved.action.q99, data.normalization.action.q99)
    np.testing.assert_array_equal(saved.state.q01, data.normalization.state.q01)
    assert saved.mode == "q01_q99"

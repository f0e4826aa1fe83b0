"""Datamodel estimators: toys with known answers (finite differences, planted effects), determinism,
checkpointing invariance, the registry contract and one-line error paths."""

from dataclasses import replace

import numpy as np
import pytest
import torch
from torch import nn

from datamil.data.schema import Episode, EpisodeMeta
from datamil.data.store import TrajectoryStore
from datamil.datamodels import ESTIMATORS, ProxyConfig, smooth_optim
from datamil.datamodels.base import check_scores, prepare
from datamil.datamodels.lds import linear_datamodeling_score, predicted_surrogates
from datamil.datamodels.metagrad import finite_difference, metagradient, replayed_difference
from datamil.datamodels.proxy import batch_order, step_fn
from datamil.datamodels.regression import fit_datamodel
from datamil.datamodels.truncated import truncated_scores
from datamil.errors import DatamilError
from datamil.policies.base import ACTION, OBS_STATE_KEY, Policy
from datamil.training import adamw_step, weighted_loss


class LinearPolicy(Policy):
    """Least squares: action = W s + b, float64."""

    def __init__(self, obs_dim: int = 3, action_dim: int = 2) -> None:
        super().__init__()
        self.lin = nn.Linear(obs_dim, action_dim).double()

    def predict(self, obs):
        return self.lin(obs[OBS_STATE_KEY])

    def loss_fn(self, batch):
        return ((self.predict(batch) - batch[ACTION]) ** 2).mean(-1)


class TinyGelu(LinearPolicy):
    """A 3 -> 8 -> 2 GELU MLP in float64."""

    def __init__(self, obs_dim: int = 3, action_dim: int = 2) -> None:
        Policy.__init__(self)
        self.lin = nn.Sequential(nn.Linear(obs_dim, 8), nn.GELU(), nn.Linear(8, action_dim)).double()


def make_store(
    n_episodes: int, length: int, seed: int, prefix: str, dims: tuple[int, int] = (3, 2)
) -> TrajectoryStore:
    rng = np.random.default_rng(seed)
    episodes = []
    for i in range(n_episodes):
        s = rng.normal(size=(length, dims[0]))
        a = np.tanh(s[:, : dims[1]] * (1 + i % 3) + 0.3 * rng.normal(size=(length, dims[1])))
        episodes.append(Episode({"state": s}, a, EpisodeMeta(f"{prefix}/{i}", prefix, "t", True)))
    return TrajectoryStore.from_episodes(episodes)


@pytest.fixture(scope="module")
def stores():
    return make_store(4, 5, 0, "prior"), make_store(2, 4, 1, "val"), make_store(1, 4, 2, "tt")


def proxy(steps: int = 12, batch: int = 8, **optim) -> ProxyConfig:
    return ProxyConfig(replace(smooth_optim(), total_steps=steps, lr=3e-2, **optim), batch_size=batch)


def test_linear_full_batch_gd_metagradient_matches_finite_differences(stores):
    """Least squares, batches as large as the pool, Adam eps 1e3 so each step is (scaled) gradient descent."""
    train, val, _ = stores
    policy = LinearPolicy()
    cfg = ProxyConfig(
        replace(smooth_optim(), total_steps=10, lr=0.1, eps=1e3, weight_decay=0.01), batch_size=20
    )
    pool, surrogate = prepare(policy, train, val)
    scores = metagradient(policy, pool, surrogate, cfg, seed=0).scores
    for row in (0, 7, 19):
        fd = finite_difference(policy, pool, surrogate, cfg, 0, row, eps=1e-6)
        assert scores[row] == pytest.approx(fd, rel=1e-4, abs=1e-12)


@pytest.mark.parametrize("checkpoint_every,reverse", [(500, "autograd"), (5, "autograd"), (5, "func")])
def test_gelu_mlp_metagradient_matches_finite_differences(stores, checkpoint_every, reverse):
    train, val, _ = stores
    policy = TinyGelu()
    cfg = proxy(weight_decay=0.1)
    pool, surrogate = prepare(policy, train, val)
    scores = metagradient(policy, pool, surrogate, cfg, 0, checkpoint_every, reverse).scores
    for row in (0, 5, 13):
        fd = finite_difference(policy, pool, surrogate, cfg, 0, row, eps=1e-6)
        assert scores[row] == pytest.approx(fd, rel=1e-4, abs=1e-10)


def test_segment_length_does_not_change_metagradients(stores):
    train, val, _ = stores
    policy = TinyGelu()
    pool, surrogate = prepare(policy, train, val)
    results = [metagradient(policy, pool, surrogate, proxy(), 0, k).scores for k in (500, 1, 4, 5)]
    for other in results[1:]:
        np.testing.assert_allclose(other, results[0], rtol=1e-9, atol=1e-14)


def test_autograd_and_torch_func_reverse_passes_agree(stores):
    """The default plain-autograd pullback and torch.func.vjp differentiate the same steps."""
    train, val, _ = stores
    policy = TinyGelu()
    pool, surrogate = prepare(policy, train, val)
    fast, func = (
        metagradient(policy, pool, surrogate, proxy(), 0, 4, r).scores for r in ("autograd", "func")
    )
    np.testing.assert_allclose(fast, func, rtol=1e-9, atol=1e-14)
    with pytest.raises(DatamilError, match="reverse="):
        metagradient(policy, pool, surrogate, proxy(), 0, 4, "jax")


def test_include_target_train_scores_only_prior(stores):
    train, val, target_train = stores
    policy = TinyGelu()
    result = ESTIMATORS.get("metagrad")(
        policy, train, val, 0, proxy=proxy(), include_target_train=True, target_train_store=target_train
    )
    assert result.scores.shape == (train.n_steps,)
    pool, _ = prepare(policy, train, val, target_train, include_target_train=True)
    assert pool.size == train.n_steps + target_train.n_steps and pool.n_scored == train.n_steps


def test_metagradient_with_a_target_share_matches_finite_differences(stores):
    """Half of every batch from target-train (co-training's 1:1 mixture): the prior's scores are still
    the exact derivative of the surrogate, and target rows fill half of each batch."""
    train, val, target_train = stores
    policy = TinyGelu()
    cfg = replace(proxy(), target_share=0.5)
    pool, surrogate = prepare(policy, train, val, target_train, include_target_train=True)
    order = batch_order(pool, cfg, 0)
    assert all(int((order(t) >= pool.n_scored).sum()) == 4 for t in range(cfg.steps))
    scores = metagradient(policy, pool, surrogate, cfg, 0).scores
    for row in (0, 5, 13):
        fd = finite_difference(policy, pool, surrogate, cfg, 0, row, eps=1e-6)
        assert scores[row] == pytest.approx(fd, rel=1e-4, abs=1e-10)


def _fd_injection(policy, pool, surrogate, cfg, seed, t_star, row, eps=1e-6, weight=None):
    """Surrogate change when sample `row` is added to the loss with weight +-eps * weight (default 1/B) at
    step t_star only, or at every step of the set t_star."""
    steps = t_star if isinstance(t_star, set) else {t_star}
    weight = 1.0 / cfg.batch_size if weight is None else weight

    def step(params, state, t, rows, delta):
        if t not in steps:
            return step_fn(policy, pool, cfg, rows, t, False)(params, state, torch.ones(cfg.batch_size))
        batch = {k: v[rows] for k, v in pool.data.items()}
        extra = {k: v[[row]] for k, v in pool.data.items()}

        def loss(p):
            base = weighted_loss(policy, p, batch, torch.ones(cfg.batch_size, dtype=torch.float64))
            return base + delta * weight * policy.per_sample_loss(p, extra)[0]

        return adamw_step(params, torch.func.grad(loss)(params), state, t, cfg.optim)

    return replayed_difference(policy, pool, surrogate, cfg, seed, step, eps)


def test_truncated_matches_finite_differences_of_the_injection(stores):
    train, val, _ = stores
    policy = TinyGelu()
    cfg = proxy()
    pool, surrogate = prepare(policy, train, val)
    window = 4
    scores = truncated_scores(
        policy, pool, surrogate, cfg, 0, window, np.arange(pool.size), chunk_size=7
    ).numpy()
    for row in (0, 9, 17):
        fd = _fd_injection(policy, pool, surrogate, cfg, 0, cfg.steps - window, row)
        assert scores[row] == pytest.approx(fd, rel=1e-4, abs=1e-10)


def test_expected_metagradient_is_the_derivative_of_injecting_a_sample_at_every_step(stores):
    """With a node at every step, eq. (expected) is exactly dS/d eps of a run whose every step adds
    eps * loss_row / N (the sample drawn with probability B/N per step)."""
    train, val, _ = stores
    policy = TinyGelu()
    cfg = proxy(steps=6, batch=4)
    pool, surrogate = prepare(policy, train, val)
    scores = metagradient(
        policy, pool, surrogate, cfg, 0, expectation_points=cfg.steps, steps_per_trajectory=None
    ).scores
    for row in (0, 9, 17):
        fd = _fd_injection(
            policy, pool, surrogate, cfg, 0, set(range(cfg.steps)), row, weight=1.0 / pool.size
        )
        assert scores[row] == pytest.approx(fd, rel=1e-4, abs=1e-10)
    assert np.count_nonzero(scores) == pool.n_scored  # every sample counts, drawn or not


def test_regression_recovers_planted_additive_effects():
    rng = np.random.default_rng(0)
    tau = rng.normal(size=30)
    masks = rng.random((400, 30)) < 0.5
    values = 2.0 + masks @ tau + rng.normal(0, 0.01, 400)
    fit, intercept = fit_datamodel(masks, values, "ridge")
    np.testing.assert_allclose(fit, tau, atol=0.02)
    assert intercept == pytest.approx(2.0, abs=0.05)
    lasso, _ = fit_datamodel(masks, values, "lasso")
    assert np.corrcoef(lasso, tau)[0, 1] > 0.99


@pytest.mark.parametrize("name", ["metagrad", "truncated", "regression", "influence"])
def test_every_estimator_is_deterministic_and_finite(stores, name):
    train, val, _ = stores
    kwargs = {"n_models": 8, "chunk": 4} if name == "regression" else {}
    kwargs["include_target_train"] = False  # the prior alone; metagrad.yaml adds target-train
    runs = [ESTIMATORS.get(name)(TinyGelu(), train, val, 3, proxy=proxy(), **kwargs).scores for _ in range(2)]
    assert runs[0].shape == (train.n_steps,) and np.all(np.isfinite(runs[0]))
    np.testing.assert_array_equal(runs[0], runs[1])
    other = ESTIMATORS.get(name)(TinyGelu(), train, val, 4, proxy=proxy(), **kwargs).scores
    assert not np.array_equal(other, runs[0])


def test_influence_projection_approximates_exact_inner_products(stores):
    train, val, _ = stores
    run = ESTIMATORS.get("influence")
    exact = run(TinyGelu(), train, val, 0, proxy=proxy()).scores
    projected = run(TinyGelu(), train, val, 0, proxy=proxy(), projection_dim=2048).scores
    assert np.corrcoef(exact, projected)[0, 1] > 0.9


def planted_store(n: int, length: int, seed: int, prefix: str, flip_every: int = 0) -> TrajectoryStore:
    """Episodes whose actions have the target's sign, except every `flip_every`-th (harmful) one."""
    rng = np.random.default_rng(seed)
    episodes = []
    for i in range(n):
        s = rng.normal(size=(length, 3))
        sign = -1.0 if flip_every and i % flip_every == 0 else 1.0
        a = sign * (1 + 0.2 * (i % 5)) * np.tanh(s[:, :2]) * 0.5
        episodes.append(Episode({"state": s}, a, EpisodeMeta(f"{prefix}/{i}", prefix, "t", True)))
    return TrajectoryStore.from_episodes(episodes)


@pytest.mark.parametrize("mode", ["reweight", "resample"])
def test_lds_is_high_for_exact_metagradients_on_a_planted_toy(mode):
    train, val = planted_store(16, 4, 5, "prior", flip_every=3), planted_store(3, 4, 6, "val")
    policy, cfg = TinyGelu(), ProxyConfig(replace(smooth_optim(), total_steps=10, lr=1e-2), batch_size=16)
    run = ESTIMATORS.get("metagrad")
    scores = {"metagrad": run(policy, train, val, 0, proxy=cfg, include_target_train=False).scores}
    scores["noise"] = np.random.default_rng(0).normal(size=train.n_steps)
    rows, masks, true = linear_datamodeling_score(
        policy, train, val, scores, cfg, 0, n_models=20, mode=mode, n_boot=50
    )
    by_name = {r.name: r for r in rows}
    assert by_name["metagrad"].lds > 0.9 and by_name["metagrad"].low <= by_name["metagrad"].lds
    assert abs(by_name["noise"].lds) < by_name["metagrad"].lds - 0.4
    assert predicted_surrogates(scores["metagrad"], train, masks).shape == true.shape == (20,)
    harmful = np.asarray([i % 3 == 0 for i in range(16)])[train.episode_of_step]
    assert scores["metagrad"][harmful].mean() > 0 > scores["metagrad"][~harmful].mean()


class NotAPolicy:
    pass


def test_error_paths_are_one_line_datamil_errors(stores):
    train, val, _ = stores
    run = ESTIMATORS.get("metagrad")
    raised = []
    with pytest.raises(DatamilError, match="per_sample_loss") as info:
        run(NotAPolicy(), train, val)
    raised.append(info.value)
    with pytest.raises(DatamilError, match="target-validation set is empty") as info:
        run(TinyGelu(), train, None)
    raised.append(info.value)
    with pytest.raises(DatamilError, match="NaN") as info:
        check_scores(np.array([0.0, np.nan]), 2, "metagrad")
    raised.append(info.value)
    with pytest.raises(DatamilError, match="include_target_train") as info:
        run(TinyGelu(), train, val, include_target_train=True)
    raised.append(info.value)
    with pytest.raises(DatamilError, match="unknown estimator") as info:
        ESTIMATORS.get("nope")
    raised.append(info.value)
    for err in raised:
        assert "\n" not in str(err), str(err)


@pytest.mark.parametrize("name", ["metagrad", "truncated", "regression", "influence"])
def test_estimator_config_instantiates_to_the_registered_estimator(name):
    import inspect

    from hydra.utils import instantiate

    cfg = ESTIMATORS.config(name)  # the file with its defaults list (the shared proxy run) composed
    estimate = instantiate(cfg)
    assert estimate.func.__wrapped__ is ESTIMATORS.get(name)
    assert set(estimate.keywords) <= set(inspect.signature(ESTIMATORS.get(name)).parameters)
    optim = estimate.keywords["proxy"].optim  # the settings the config's comment says differ from co-training
    assert (optim.eps, optim.grad_clip, optim.warmup_steps, optim.min_lr_ratio) == (1e-2, None, 0, 1.0)
    assert optim.total_steps == 400


def test_metagrad_warns_when_the_proxy_run_cannot_draw_every_sample(stores, caplog):
    train, val, _ = stores
    run = ESTIMATORS.get("metagrad")
    uniform = replace(proxy(steps=2, batch=4), sampling="uniform")  # 8 draws from 20 rows
    with caplog.at_level("WARNING", logger="datamil.datamodels.metagrad"):
        scores = run(TinyGelu(), train, val, 0, proxy=uniform, include_target_train=False).scores
    assert "samples it never draws score 0" in caplog.text
    assert np.count_nonzero(scores) <= 8  # only drawn samples can move the surrogate
    caplog.clear()
    with caplog.at_level("WARNING", logger="datamil.datamodels.metagrad"):
        auto = proxy(steps=2, batch=4)  # auto: the batch raised to 10, one permutation of the 20 rows
        result = run(TinyGelu(), train, val, 0, proxy=auto, include_target_train=False)
    assert caplog.text == ""
    assert np.count_nonzero(result.scores) == train.n_steps  # every sample was drawn, so every one scores
    trajectory = replace(auto, sampling="trajectory")  # rounds of one step per trajectory
    with caplog.at_level("WARNING", logger="datamil.datamodels.metagrad"):
        scores = run(TinyGelu(), train, val, 0, proxy=trajectory, include_target_train=False).scores
    assert caplog.text == ""
    per_episode = np.bincount(train.episode_of_step, weights=np.abs(scores), minlength=train.n_episodes)
    assert np.all(per_episode > 0)  # every trajectory was drawn, so every trajectory has a score
    with caplog.at_level("WARNING", logger="datamil.datamodels.metagrad"):
        run(TinyGelu(), train, val, 0, proxy=proxy(steps=12, batch=8), include_target_train=False)
    assert caplog.text == ""


def test_estimator_costs_are_warm_interleaved_medians_on_the_shipped_pool(stores, monkeypatch):
    """`python -m datamil.lds` times warm rounds (training run, then each estimator) and, like `select`,
    trains its proxies on prior + target-train by default."""
    import datamil.datamodels.lds as lds_lib
    from datamil.lds import parse_args

    assert (
        parse_args([]).include_target_train
        and not parse_args(["--no-include-target-train"]).include_target_train
    )
    train, val, target_train = stores
    calls = []
    real = lds_lib.train_proxy

    def spy(policy, pool, cfg, seed):
        calls.append((cfg.steps, pool.size))
        return real(policy, pool, cfg, seed)

    monkeypatch.setattr(lds_lib, "train_proxy", spy)
    data = {"target_train_store": target_train, "include_target_train": True}
    costs = lds_lib.estimator_costs(TinyGelu(), train, val, {"metagrad": {}}, proxy(), 0, repeats=3, **data)
    pool_size = train.n_steps + target_train.n_steps
    assert calls == [(10, pool_size)] + [(12, pool_size)] * 3  # one short warm-up run, then one per round
    exact = ESTIMATORS.get("metagrad")(TinyGelu(), train, val, 0, proxy=proxy(), **data).scores
    np.testing.assert_array_equal(costs.scores["metagrad"], exact)
    assert costs.train_s > 0 and costs.wall_s["metagrad"] > 0 and np.isfinite(costs.ratio["metagrad"])
    with pytest.raises(DatamilError, match="repeats"):
        lds_lib.estimator_costs(TinyGelu(), train, val, {"metagrad": {}}, proxy(), 0, repeats=0)

"""The functional optimizer, the deterministic training loop, samplers and loggers."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from datamil.data.schema import Episode, EpisodeMeta
from datamil.data.store import TrajectoryStore
from datamil.errors import DatamilError
from datamil.logger import MemoryLogger, NullLogger, WandbLogger, make_logger
from datamil.policies import POLICIES, Policy
from datamil.training import (
    BatchSource,
    MixtureSampler,
    OptimConfig,
    UniformSampler,
    adamw_step,
    batch_indices,
    gather_batch,
    init_opt_state,
    init_params,
    loss_and_grads,
    lr_at,
    train,
    weighted_loss,
)

OBS_DIM, ACTION_DIM = 6, 3
CFG = OptimConfig(lr=3e-3, warmup_steps=5, total_steps=40)


@pytest.fixture(scope="module")
def store() -> TrajectoryStore:
    """Eight episodes; actions are a fixed smooth function of the state, so BC can fit them."""
    rng = np.random.default_rng(1)
    mix = rng.normal(size=(OBS_DIM, ACTION_DIM)) / np.sqrt(OBS_DIM)
    episodes = []
    for i in range(8):
        state = rng.normal(size=(25, OBS_DIM)).astype(np.float32)
        episodes.append(
            Episode({"state": state}, np.tanh(state @ mix).astype(np.float32), EpisodeMeta(f"e{i}", "toy"))
        )
    return TrajectoryStore.from_episodes(episodes)


def mlp_policy(store: TrajectoryStore, hidden=(32, 32)) -> Policy:
    return POLICIES.get("bc_mlp")(
        OBS_DIM, ACTION_DIM, hidden=hidden, state_stats=store.stats["toy"]["obs/state"]
    )


def run(store: TrajectoryStore, steps: int = 40, **kwargs):
    kwargs.setdefault("cfg", CFG)
    return train(
        mlp_policy(store), store, np.arange(store.n_steps), steps, 16, seed=0, progress=False, **kwargs
    )


# ----------------------------------------------------------------------------- optimizer
def test_lr_schedule_warms_up_then_decays_to_the_floor() -> None:
    cfg = OptimConfig(lr=1.0, warmup_steps=10, total_steps=110, min_lr_ratio=0.1)
    assert lr_at(0, cfg) == pytest.approx(0.1) and lr_at(9, cfg) == pytest.approx(1.0)
    assert lr_at(10, cfg) == pytest.approx(1.0) and lr_at(60, cfg) == pytest.approx(0.55)
    assert lr_at(110, cfg) == pytest.approx(0.1) and lr_at(500, cfg) == pytest.approx(0.1)


def _adamw_against_torch(eps: float) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """25 steps of adamw_step and of torch.optim.AdamW from the same start: (ours, torch) per parameter."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2)).double()
    x, y = torch.randn(32, 4, dtype=torch.float64), torch.randn(32, 2, dtype=torch.float64)
    cfg = OptimConfig(lr=1e-2, weight_decay=0.1, eps=eps, min_lr_ratio=1.0, grad_clip=None)  # constant lr
    params = {k: v.detach().clone() for k, v in model.named_parameters()}
    state = init_opt_state(params)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=cfg.betas, eps=eps, weight_decay=0.1)
    loss = lambda p: ((torch.func.functional_call(model, p, (x,)) - y) ** 2).mean()  # noqa: E731
    for step in range(25):
        params, state = adamw_step(params, torch.func.grad(loss)(params), state, step, cfg)
        opt.zero_grad()
        loss(dict(model.named_parameters())).backward()
        opt.step()
    return [(params[name], p.detach()) for name, p in model.named_parameters()]


def test_adamw_step_matches_torch_adamw() -> None:
    for ours, reference in _adamw_against_torch(eps=0.0):  # same math when eps plays no part
        torch.testing.assert_close(ours, reference, rtol=1e-12, atol=1e-12)
    for ours, reference in _adamw_against_torch(eps=1e-8):  # eps inside the root: differs by ~eps / sqrt(v)
        torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-6)


def test_adamw_step_does_not_mutate_and_reverse_pass_is_finite_with_dead_params() -> None:
    """NaN trap: v = 0 for a parameter that never gets a gradient; its metagradient must stay finite."""
    params = {"w": torch.tensor([1.0, 2.0], dtype=torch.float64), "dead": torch.zeros(3, dtype=torch.float64)}
    weights = torch.tensor([0.5, 2.0], dtype=torch.float64, requires_grad=True)
    cfg = OptimConfig(lr=0.1, grad_clip=1.0)

    def unroll(w: torch.Tensor) -> torch.Tensor:
        p, s = params, init_opt_state(params)
        for step in range(3):
            grads = {"w": 2 * w * p["w"], "dead": torch.zeros(3, dtype=torch.float64)}
            p, s = adamw_step(p, grads, s, step, cfg)
        return p["w"].sum() + p["dead"].sum()

    (metagrad,) = torch.autograd.grad(unroll(weights), weights)
    assert torch.isfinite(metagrad).all() and metagrad.abs().sum() > 0
    assert torch.equal(params["dead"], torch.zeros(3, dtype=torch.float64))


def test_adamw_step_is_exactly_differentiable() -> None:
    """gradcheck (float64 finite differences) through 4 clipped, decayed, warmed-up steps."""
    cfg = OptimConfig(lr=0.1, grad_clip=0.5, weight_decay=0.01, warmup_steps=2, total_steps=5)

    def unroll(w: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        params, state = {"x": x}, init_opt_state({"x": x})
        for step in range(4):
            params, state = adamw_step(params, {"x": torch.sin(params["x"]) * w}, state, step, cfg)
        return params["x"]

    torch.manual_seed(0)
    inputs = tuple(torch.randn(3, dtype=torch.float64, requires_grad=True) for _ in range(2))
    assert torch.autograd.gradcheck(unroll, inputs)


def test_grad_clipping_changes_a_large_update_only() -> None:
    params = {"w": torch.zeros(4)}
    clipped, free = OptimConfig(lr=1.0, grad_clip=1.0), OptimConfig(lr=1.0, grad_clip=None)
    big, small = {"w": torch.tensor([100.0, 0.0, 0.0, 1.0])}, {"w": torch.tensor([0.1, 0.0, 0.0, 0.1])}
    state = init_opt_state(params)
    # the second moment sees the clipped gradient, so the update's direction mix changes
    _, s_clip = adamw_step(params, big, state, 0, clipped)
    _, s_free = adamw_step(params, big, state, 0, free)
    assert torch.allclose(s_clip["m"]["w"], s_free["m"]["w"] / big["w"].norm(), rtol=1e-5)
    p_clip, _ = adamw_step(params, small, state, 0, clipped)
    p_free, _ = adamw_step(params, small, state, 0, free)
    assert torch.equal(p_clip["w"], p_free["w"])


def test_composable_and_fast_gradients_agree(store: TrajectoryStore) -> None:
    policy = mlp_policy(store)
    batch = gather_batch(policy, store, np.arange(16))
    weights = torch.linspace(0, 2, 16)
    fast = loss_and_grads(policy, policy.params(), batch, weights)
    composable = loss_and_grads(policy, policy.params(), batch, weights, composable=True)
    assert torch.equal(fast[0], composable[0])
    for k in fast[1]:
        torch.testing.assert_close(fast[1][k], composable[1][k], rtol=1e-6, atol=1e-7)


def test_zero_weight_removes_a_sample_exactly(store: TrajectoryStore) -> None:
    policy = mlp_policy(store)
    batch = gather_batch(policy, store, np.arange(8))
    weights = torch.tensor([1.0, 1, 1, 0, 1, 1, 1, 1])
    corrupted = {k: v.clone() for k, v in batch.items()}
    corrupted["obs/state"][3] = 1e3
    corrupted["action"][3] = -1.0
    _, g1 = loss_and_grads(policy, policy.params(), batch, weights)
    _, g2 = loss_and_grads(policy, policy.params(), corrupted, weights)
    assert all(torch.equal(g1[k], g2[k]) for k in g1)
    # divided by B, not by sum(w): d(loss)/d(w_i) = loss_i / B
    per_sample = policy.per_sample_loss(policy.params(), batch)
    w = weights.clone().requires_grad_()
    (dw,) = torch.autograd.grad(weighted_loss(policy, policy.params(), batch, w), w)
    torch.testing.assert_close(dw, per_sample / 8)


# ----------------------------------------------------------------------------- training loop
def test_training_is_bit_identical_for_the_same_seed(store: TrajectoryStore) -> None:
    a, b = run(store), run(store)
    assert all(torch.equal(a.params[k], b.params[k]) for k in a.params)
    np.testing.assert_array_equal(a.losses, b.losses)
    other = train(mlp_policy(store), store, np.arange(store.n_steps), 40, 16, CFG, seed=1, progress=False)
    assert not torch.equal(a.params["net.0.weight"], other.params["net.0.weight"])


def test_resume_equals_an_uninterrupted_run(store: TrajectoryStore, tmp_path) -> None:
    full = run(store)
    run(store, steps=17, checkpoint_dir=tmp_path, checkpoint_every=5)  # "killed" after step 17
    resumed = run(store, checkpoint_dir=tmp_path, checkpoint_every=5)
    assert all(torch.equal(full.params[k], resumed.params[k]) for k in full.params)
    np.testing.assert_array_equal(full.losses, resumed.losses)
    with pytest.raises(DatamilError, match="different optim"):
        run(store, checkpoint_dir=tmp_path, cfg=dataclasses.replace(CFG, lr=1e-2))


def test_training_on_a_memory_mapped_store_matches_in_memory(store: TrajectoryStore, tmp_path) -> None:
    mapped = TrajectoryStore.load(store.save(tmp_path / "store"))
    a = run(store, steps=10)
    b = train(mlp_policy(store), mapped, np.arange(store.n_steps), 10, 16, CFG, seed=0, progress=False)
    assert all(torch.equal(a.params[k], b.params[k]) for k in a.params)


def test_zero_weights_make_training_ignore_those_steps(store: TrajectoryStore) -> None:
    weights = np.ones(store.n_steps, np.float32)
    weights[store.step_indices([2, 5])] = 0.0
    base = run(store, weights=weights)
    broken = TrajectoryStore.from_episodes(
        Episode({"state": ep.observations["state"]}, -ep.actions if i in (2, 5) else ep.actions, ep.meta)
        for i, ep in enumerate(store.episode(i) for i in range(store.n_episodes))
    )
    other = train(
        mlp_policy(store), broken, np.arange(store.n_steps), 40, 16, CFG, 0, weights=weights, progress=False
    )
    assert all(torch.equal(base.params[k], other.params[k]) for k in base.params)


def test_bc_fits_a_tiny_dataset(store: TrajectoryStore) -> None:
    cfg = OptimConfig(lr=3e-3, warmup_steps=10, total_steps=300)
    result = train(
        mlp_policy(store, (64, 64)), store, np.arange(store.n_steps), 300, 32, cfg, 0, progress=False
    )
    assert result.losses[-20:].mean() < 0.05 * result.losses[:5].mean()


def test_training_logs_through_the_logger_and_loads_final_params(store: TrajectoryStore) -> None:
    logger, policy = MemoryLogger(), mlp_policy(store)
    result = train(
        policy, store, np.arange(store.n_steps), 40, 16, CFG, 0, logger=logger, log_every=10, progress=False
    )
    assert [step for step, _ in logger.records] == [10, 20, 30, 40]
    assert set(logger.records[0][1]) == {"train/loss", "train/lr"}
    assert all(torch.equal(p, result.params[k]) for k, p in policy.named_parameters())


def test_init_params_is_seeded(store: TrajectoryStore) -> None:
    a, b = init_params(mlp_policy(store), 4), init_params(mlp_policy(store), 4)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["net.0.weight"], init_params(mlp_policy(store), 5)["net.0.weight"])


# ----------------------------------------------------------------------------- samplers and batches
def test_batch_indices_depend_only_on_seed_and_step() -> None:
    first = batch_indices(3, 10, 100, 64)
    assert np.array_equal(first, batch_indices(3, 10, 100, 64))
    assert not np.array_equal(first, batch_indices(3, 11, 100, 64))
    assert not np.array_equal(first, batch_indices(4, 10, 100, 64))
    assert first.min() >= 0 and first.max() < 100


def test_mixture_sampler_respects_ratios() -> None:
    target, prior = np.arange(0, 10), np.arange(100, 1000)
    sampler = MixtureSampler([target, prior], [0.3, 0.7], batch_size=25, seed=0)
    draws = np.stack([sampler.indices(step) for step in range(400)])
    assert draws.shape == (400, 25)
    share = np.isin(draws, target).mean()
    assert share == pytest.approx(0.3, abs=0.005)
    assert np.isin(draws, np.concatenate([target, prior])).all()
    assert np.array_equal(sampler.indices(7), MixtureSampler([target, prior], [3, 7], 25, 0).indices(7))
    np.testing.assert_array_equal(sampler.pool, np.concatenate([target, prior]))


@pytest.mark.parametrize(
    ("pools", "ratios", "message"),
    [
        ([np.arange(3), np.arange(3, 6)], [1.0, 0.0], "must be positive"),
        ([np.arange(3), np.arange(3, 6)], [1.0, -1.0], "must be positive"),
        ([np.arange(3), np.zeros(0, np.int64)], [0.5, 0.5], "pool 1 is empty"),
        ([np.arange(3)], [0.5, 0.5], "one ratio per pool"),
    ],
)
def test_mixture_sampler_errors_are_one_line(pools, ratios, message) -> None:
    with pytest.raises(DatamilError, match=message) as error:
        MixtureSampler(pools, ratios, 8, 0)
    assert "\n" not in str(error.value)


def test_training_on_a_mixture(store: TrajectoryStore) -> None:
    sampler = MixtureSampler([store.step_indices([0]), store.step_indices(range(1, 8))], [0.5, 0.5], 16, 0)
    result = train(mlp_policy(store), store, sampler, 20, 16, CFG, 0, progress=False)
    assert np.isfinite(result.losses).all()
    with pytest.raises(DatamilError, match="empty"):
        UniformSampler(np.zeros(0, np.int64), 16, 0)


def test_batch_source_rejects_steps_outside_its_pool(store: TrajectoryStore) -> None:
    source = BatchSource(mlp_policy(store), store, np.arange(10, 20))
    batch, weights = source.batch(np.array([12, 19, 12]))
    assert batch["index"].tolist() == [12, 19, 12] and torch.equal(weights, torch.ones(3))
    with pytest.raises(IndexError):
        source.batch(np.array([5]))


# ----------------------------------------------------------------------------- loggers
def test_wandb_logger_writes_offline_inside_the_run_dir(tmp_path) -> None:
    logger = make_logger("offline", tmp_path, {"lr": 1e-3})
    assert isinstance(logger, WandbLogger)
    logger.log({"train/loss": 1.0}, step=1)
    logger.close()
    assert logger.run_dir is not None and tmp_path in logger.run_dir.parents
    assert list((tmp_path / "wandb").glob("offline-run-*/*.wandb"))
    assert isinstance(make_logger("none"), NullLogger)
    with pytest.raises(DatamilError, match="unknown wandb mode"):
        WandbLogger(tmp_path, mode="cloud")

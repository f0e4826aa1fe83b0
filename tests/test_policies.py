"""Policy contract (every registered policy), the Gaussian likelihood, diffusion noise, chunks, checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from datamil.checkpoint import load_policy, save_policy
from datamil.data.sampling import ACTION_CHUNK, ACTION_CHUNK_MASK, action_chunks
from datamil.data.schema import Episode, EpisodeMeta
from datamil.data.store import TrajectoryStore
from datamil.errors import DatamilError
from datamil.policies import POLICIES, Policy
from datamil.policies.diffusion import hash_normal, hash_uniform
from datamil.policies.gaussian import GaussianPolicy
from datamil.training import gather_batch, init_params

OBS_DIM, ACTION_DIM = 5, 2


@pytest.fixture(scope="module")
def store() -> TrajectoryStore:
    """Three short episodes whose actions are a smooth function of the state."""
    rng = np.random.default_rng(0)
    episodes = []
    for i, length in enumerate((12, 7, 15)):
        state = rng.normal(size=(length, OBS_DIM)).astype(np.float32)
        action = np.tanh(state[:, :ACTION_DIM]).astype(np.float32)
        episodes.append(Episode({"state": state}, action, EpisodeMeta(f"ep{i}", "toy")))
    return TrajectoryStore.from_episodes(episodes)


def make(name: str, store: TrajectoryStore, **kwargs) -> Policy:
    stats = store.stats["toy"]["obs/state"]
    return POLICIES.get(name)(OBS_DIM, ACTION_DIM, hidden=(16, 16), state_stats=stats, **kwargs)


@pytest.mark.parametrize("name", POLICIES.names())
def test_per_sample_loss_contract(name: str, store: TrajectoryStore) -> None:
    policy = make(name, store)
    batch = gather_batch(policy, store, np.arange(10))
    params = policy.params()
    loss = policy.per_sample_loss(params, batch)
    assert loss.shape == (10,) and torch.isfinite(loss).all()
    grads = torch.func.grad(lambda p: policy.per_sample_loss(p, batch).mean())(params)
    assert set(grads) == set(params) and all(torch.isfinite(g).all() for g in grads.values())
    assert torch.equal(loss, policy.per_sample_loss(params, batch)), "the loss must be a fixed function"


@pytest.mark.parametrize("name", POLICIES.names())
def test_per_sample_gradients_by_vmap(name: str, store: TrajectoryStore) -> None:
    """Estimators take per-sample gradients with vmap(grad); every loss must support it."""
    policy = make(name, store)
    batch = gather_batch(policy, store, np.arange(6))
    params = policy.params()

    def one(p, sample):
        return policy.per_sample_loss(p, {k: v.unsqueeze(0) for k, v in sample.items()})[0]

    per_sample = torch.func.vmap(torch.func.grad(one), in_dims=(None, 0))(params, batch)
    key = next(iter(params))
    direct = torch.func.grad(one)(params, {k: v[3] for k, v in batch.items()})
    torch.testing.assert_close(per_sample[key][3], direct[key], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", POLICIES.names())
def test_act_shapes_and_range(name: str, store: TrajectoryStore) -> None:
    policy = make(name, store)
    actions = policy.act(policy.params(), {"state": store.arrays["obs/state"][:3]})
    horizon = getattr(policy, "horizon", None)
    assert actions.shape == ((3, ACTION_DIM) if horizon is None else (3, horizon, ACTION_DIM))
    assert np.all(np.abs(actions) <= 1.0) and np.all(np.isfinite(actions))


def test_gaussian_nll_is_the_tanh_squashed_likelihood(store: TrajectoryStore) -> None:
    policy = make("bc_gaussian", store)
    assert isinstance(policy, GaussianPolicy)
    batch = gather_batch(policy, store, np.arange(8))
    mu, log_std = policy.distribution(batch)
    squashed = torch.distributions.TransformedDistribution(
        torch.distributions.Normal(mu, log_std.exp()), [torch.distributions.TanhTransform()]
    )
    action = batch["action"].clamp(-1 + 1e-4, 1 - 1e-4)
    expected = -squashed.log_prob(action).sum(-1)
    torch.testing.assert_close(policy.loss_fn(batch), expected, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(policy.predict(batch), torch.tanh(mu))  # tanh applied once


def test_gaussian_loss_is_finite_for_saturated_actions(store: TrajectoryStore) -> None:
    policy = make("bc_gaussian", store)
    batch = gather_batch(policy, store, np.arange(4))
    batch["action"] = torch.tensor([[1.0, -1.0], [1.5, 0.0], [-1.0, 1.0], [0.0, 0.0]])
    assert torch.isfinite(policy.loss_fn(batch)).all()


def test_hashed_noise_is_standard_normal_and_keyed() -> None:
    index = torch.arange(20_000)
    z = hash_normal(index, seed=0, n=16)
    assert abs(z.mean().item()) < 0.02 and abs(z.std().item() - 1) < 0.02
    assert torch.equal(z, hash_normal(index, seed=0, n=16))
    assert not torch.equal(z, hash_normal(index, seed=1, n=16))
    u = hash_uniform(index, 0, 3)
    assert 0 < u.min() and u.max() < 1
    big = torch.tensor([2**40 + 7, 7])  # ids past 2^32 must not collide with small ones
    assert not torch.equal(hash_normal(big, 0, 4)[0], hash_normal(big, 0, 4)[1])


def test_diffusion_loss_is_a_fixed_function_of_params(store: TrajectoryStore) -> None:
    policy = make("diffusion", store, horizon=4, n_action_steps=2)
    params = policy.params()
    batch = gather_batch(policy, store, np.arange(8))
    loss = policy.per_sample_loss(params, batch)
    torch.manual_seed(123)  # the global RNG must not matter
    assert torch.equal(loss, policy.per_sample_loss(params, batch))
    shifted = dict(batch, index=batch["index"] + 1000)  # same data, other step ids: other noise
    assert not torch.allclose(loss, policy.per_sample_loss(params, shifted))
    reordered = gather_batch(policy, store, np.arange(8)[::-1].copy())  # a sample's noise is its own
    torch.testing.assert_close(policy.per_sample_loss(params, reordered).flip(0), loss)
    other_seed = make("diffusion", store, horizon=4, n_action_steps=2, noise_seed=1)
    assert not torch.allclose(loss, other_seed.per_sample_loss(params, batch))


def test_diffusion_sampling_is_seeded(store: TrajectoryStore) -> None:
    policy = make("diffusion", store, horizon=4, n_action_steps=2)
    obs = {"state": store.arrays["obs/state"][:2]}
    policy.reset_sampler(5)
    first = policy.act(None, obs)
    policy.reset_sampler(5)
    np.testing.assert_array_equal(first, policy.act(None, obs))


def test_action_chunks_pad_with_last_action_at_episode_end(store: TrajectoryStore) -> None:
    # episode 0 has steps 0..11, episode 1 steps 12..18
    chunks, mask = action_chunks(store.arrays["action"], store.offsets, np.array([0, 10, 18]), horizon=4)
    actions = store.arrays["action"]
    np.testing.assert_array_equal(chunks[0], actions[0:4])
    np.testing.assert_array_equal(chunks[1], actions[[10, 11, 11, 11]])
    np.testing.assert_array_equal(chunks[2], actions[[18, 18, 18, 18]])
    np.testing.assert_array_equal(mask, [[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]])
    batch = gather_batch(make("diffusion", store, horizon=4, n_action_steps=2), store, np.array([10]))
    assert batch[ACTION_CHUNK].shape == (1, 4, ACTION_DIM) and batch[ACTION_CHUNK_MASK].shape == (1, 4)


def test_diffusion_needs_chunks_in_the_batch(store: TrajectoryStore) -> None:
    policy = make("diffusion", store)
    batch = {k: torch.as_tensor(v) for k, v in store.batch(np.arange(3)).items()}
    with pytest.raises(DatamilError, match="gather_batch"):
        policy.per_sample_loss(policy.params(), batch)


@pytest.mark.parametrize("name", POLICIES.names())
def test_checkpoint_round_trip(name: str, store: TrajectoryStore, tmp_path) -> None:
    hidden = OmegaConf.create({"h": [16, 16]}).h  # as hydra.utils.instantiate passes it
    stats = store.stats["toy"]["obs/state"]
    policy = POLICIES.get(name)(OBS_DIM, ACTION_DIM, hidden=hidden, state_stats=stats)
    params = init_params(policy, seed=3)
    path = save_policy(
        tmp_path / "policy.pt", policy, params, task="toy-task", train_config={"steps": 7}, step=7
    )
    loaded = load_policy(path, expected=name)
    assert (loaded.name, loaded.task, loaded.step, loaded.train_config) == (name, "toy-task", 7, {"steps": 7})
    obs = {"state": store.arrays["obs/state"][:4]}
    for p in (policy, loaded.policy):
        getattr(p, "reset_sampler", lambda s: None)(0)
    np.testing.assert_array_equal(policy.act(params, obs), loaded.policy.act(None, obs))
    np.testing.assert_allclose(loaded.policy.obs_norm.mean.numpy(), stats.mean, rtol=1e-6)


def test_checkpoint_of_the_wrong_type_fails_in_one_line(store: TrajectoryStore, tmp_path) -> None:
    path = save_policy(tmp_path / "mlp.pt", make("bc_mlp", store))
    with pytest.raises(DatamilError, match="holds a 'bc_mlp' policy, not 'diffusion'") as error:
        load_policy(path, expected="diffusion")
    assert "\n" not in str(error.value)
    with pytest.raises(DatamilError, match="no checkpoint"):
        load_policy(tmp_path / "missing.pt")

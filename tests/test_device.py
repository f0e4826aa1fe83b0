"""The `device` setting: one resolver for every app, and every tensor of training, the proxy runs, the
estimators, the image encoder, acting and serving built on the parameters' device.

Without a GPU the `meta` device stands in: meta tensors carry shapes but no values, and torch refuses to
mix them with CPU tensors, so a tensor built on the CPU inside a step fails here as it would on CUDA.
The tests on the `device` fixture run the same numeric checks on the CPU and, where torch sees a GPU,
on CUDA (skipped with a reason otherwise).
"""

from __future__ import annotations

import functools
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from datamil.checkpoint import save_policy
from datamil.cli import CONFIG_DIR
from datamil.data.schema import Episode, EpisodeMeta
from datamil.data.store import TrajectoryStore
from datamil.datamodels import ProxyConfig, smooth_optim
from datamil.datamodels.base import prepare
from datamil.datamodels.features import encode_store
from datamil.datamodels.influence import checkpoint_dots, projection
from datamil.datamodels.metagrad import pull_back, record_segment, run_metagrad
from datamil.datamodels.proxy import initial_state, train_ensemble, train_proxy
from datamil.datamodels.regression import run_regression
from datamil.datamodels.surrogate import loss_directional_derivatives
from datamil.datamodels.truncated import truncated_scores
from datamil.device import resolve_device
from datamil.errors import DatamilError
from datamil.policies.base import ACTION, OBS_STATE_KEY, Policy
from datamil.policies.build import build_policy
from datamil.policies.diffusion import DiffusionPolicy
from datamil.policies.mlp import MLPPolicy
from datamil.policies.vision import DiffusionImagePolicy, VisionPolicy
from datamil.real_robot.server import load_served
from datamil.training import BatchSource, LossCurve, OptimConfig, gather_batch, init_params, train

META = torch.device("meta")
CONFIGS = Path(CONFIG_DIR)
DIFFUSION = dict(hidden=(16, 16), horizon=4, n_action_steps=2, inference_steps=3)
IMAGE = dict(channels=(8, 8), strides=(2, 1), keypoints=4, feature_dim=8, hidden=(16,), image_size=(32, 32))


def make_store(n: int, length: int, seed: int, prefix: str, obs_dim: int = 6, images: bool = False):
    rng = np.random.default_rng(seed)
    episodes = []
    for i in range(n):
        state = rng.normal(size=(length, obs_dim)).astype(np.float32)
        action = np.tanh(state[:, :3] + 0.3 * rng.normal(size=(length, 3))).astype(np.float32)
        obs = {"state": state}
        if images:
            obs["image_primary"] = rng.integers(0, 255, (length, 32, 32, 3), dtype=np.uint8)
        episodes.append(Episode(obs, action, EpisodeMeta(f"{prefix}/{i}", prefix, "t", True)))
    return TrajectoryStore.from_episodes(episodes)


@pytest.fixture(scope="module")
def stores() -> tuple[TrajectoryStore, TrajectoryStore, TrajectoryStore]:
    """(prior, target-train, target-val)."""
    return make_store(5, 7, 0, "prior"), make_store(2, 6, 1, "tt"), make_store(2, 5, 2, "val")


@pytest.fixture(params=["cpu", "cuda"])
def device(request) -> torch.device:
    if request.param == "cuda" and not torch.cuda.is_available():
        pytest.skip("torch sees no CUDA GPU here; the same assertions run on cuda where it does")
    return torch.device(request.param)


def proxy(steps: int = 6, batch: int = 8) -> ProxyConfig:
    return ProxyConfig(replace(smooth_optim(), total_steps=steps, lr=1e-2), batch_size=batch)


class Gelu64(Policy):
    """A float64 GELU MLP: on a GPU its estimator scores match the CPU's up to reduction order."""

    def __init__(self, obs_dim: int = 6, action_dim: int = 3, **_: object) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(obs_dim, 8), nn.GELU(), nn.Linear(8, action_dim)).double()

    def predict(self, obs):
        return self.net(obs[OBS_STATE_KEY].double())

    def loss_fn(self, batch):
        return ((self.predict(batch) - batch[ACTION].double()) ** 2).mean(-1)


# ------------------------------------------------------------------------------------- the resolver
def test_resolve_device_names(monkeypatch) -> None:
    assert resolve_device("cpu") == resolve_device(" CPU ") == torch.device("cpu")
    assert resolve_device(META) == META  # a torch.device is the caller's own choice
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == resolve_device(None) == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device("cuda:1") == torch.device("cuda", 1)


@pytest.mark.parametrize(
    "name, cuda, message",
    [
        ("gpu", True, "unknown device 'gpu'; use auto, cpu, cuda or cuda:<index>"),
        ("mps", True, "unknown device 'mps'"),
        ("cuda:x", True, "unknown device 'cuda:x'"),
        ("cuda", False, "device=cuda but torch sees no CUDA GPU here"),
        ("cuda:2", True, "device=cuda:2 but torch sees 2 CUDA GPU"),
    ],
)
def test_a_bad_device_is_one_line(monkeypatch, name, cuda, message) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2 if cuda else 0)
    with pytest.raises(DatamilError, match=re.escape(message)) as error:
        resolve_device(name)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("app", ["select", "cotrain", "evaluate", "regression_shards", "lds_shards", "serve"])
def test_every_app_has_a_device_setting_that_defaults_to_auto(app) -> None:
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONFIGS), version_base=None):
        cfg = compose(config_name=app)
    assert cfg.device == "auto"


def test_an_app_refuses_an_unknown_device_before_any_work(cli_env, tmp_path) -> None:
    command = [sys.executable, "-m", "datamil.evaluate", "checkpoint=none.pt", "device=gpu"]
    done = subprocess.run(
        [*command, f"hydra.run.dir={tmp_path}"], env=cli_env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "error: unknown device 'gpu'; use auto, cpu, cuda or cuda:<index>"
    ]
    with pytest.raises(DatamilError, match="unknown device"):
        load_served(tmp_path / "none.pt", "gpu")  # the server refuses it before reading the checkpoint


# ------------------------------------------------------------------------------------- meta stand-in
def test_diffusion_noise_prediction_builds_every_tensor_on_the_params_device(stores) -> None:
    policy = build_policy(functools.partial(DiffusionPolicy, **DIFFUSION), stores[0])
    batch = {k: v.to(META) for k, v in gather_batch(policy, stores[0], np.arange(5)).items()}
    params = policy.to(META).params()
    assert policy.per_sample_loss(params, batch).shape == (5,)
    actions = torch.func.functional_call(policy, params, (batch,), {"mode": "predict"})
    assert actions.shape == (5, 4, 3) and actions.device == META  # DDIM's timesteps on the params' device


@pytest.mark.parametrize("cls", [VisionPolicy, DiffusionImagePolicy])
def test_image_policy_augmentation_and_encoder_run_on_the_params_device(cls) -> None:
    store = make_store(2, 4, 3, "img", images=True)
    factory = functools.partial(cls, image_keys=("image_primary",), cameras={"image_primary": "c"}, **IMAGE)
    policy = build_policy(factory, store)
    batch = {k: v.to(META) for k, v in gather_batch(policy, store, np.arange(6)).items()}
    params = policy.train().to(META).params()
    assert policy.per_sample_loss(params, batch).shape == (6,)  # random shift in train mode


def test_proxy_runs_and_estimators_keep_every_tensor_on_the_pool_device(stores) -> None:
    prior, target_train, val = stores
    for factory in (
        functools.partial(MLPPolicy, hidden=(8,)),
        functools.partial(DiffusionPolicy, **DIFFUSION),
    ):
        policy = build_policy(factory, prior).to(META)
        pool, surrogate = prepare(policy, prior, val, target_train, include_target_train=True)
        assert pool.device == META and surrogate.val[OBS_STATE_KEY].device == META
        cfg = proxy(steps=3, batch=4)
        assert next(iter(train_proxy(policy, pool, cfg, 0).values())).device == META
        stacked = train_ensemble(policy, pool, [np.arange(pool.size)] * 2, cfg, 0, torch.ones(2, pool.size))
        assert next(iter(stacked.values())).device == META
        for reverse in ("autograd", "func"):
            z, records = record_segment(policy, pool, cfg, 0, initial_state(policy, 0), 0, 3, reverse=reverse)
            buffer = torch.zeros(pool.size, dtype=torch.float64, device=META)
            zero = {k: {n: torch.zeros_like(p) for n, p in d.items()} for k, d in z[1].items()}
            pull_back(records, (surrogate.grad(z[0]), zero), buffer)
        assert truncated_scores(policy, pool, surrogate, cfg, 0, 2, np.arange(pool.size)).device == META
        params = z[0]
        assert loss_directional_derivatives(policy, pool, params, params).device == META
        direction = torch.cat([p.flatten() for p in params.values()])
        proj = projection(len(direction), 4, 0, direction.dtype, META)
        assert checkpoint_dots(policy, pool, params, direction, 3, proj).device == META


def test_batch_source_hands_out_batches_on_its_device(stores) -> None:
    policy = build_policy(functools.partial(DiffusionPolicy, **DIFFUSION), stores[0])
    source = BatchSource(policy, stores[0], np.arange(20), np.linspace(0, 1, stores[0].n_steps), META)
    batch, weights = source.batch(np.array([3, 1, 3]))
    assert {v.device for v in batch.values()} == {META} and weights.device == META
    assert all(v.device.type == "cpu" for v in source.tensors.values())  # the source stays on the host


def test_loss_curve_read_lazily_equals_read_every_step() -> None:
    losses = [torch.tensor(v, dtype=torch.float32) for v in np.random.default_rng(0).normal(size=23)]
    eager, lazy = LossCurve(25, torch.device("cpu")), LossCurve(25, META)
    assert lazy.lazy and not eager.lazy
    for step, loss in enumerate(losses, start=2):
        eager.record(step, loss)
        lazy.record(step, loss)
        if step in (5, 6, 17):
            lazy.sync()
    assert eager.sync().tobytes() == lazy.sync().tobytes()
    assert np.isnan(lazy.values[:2]).all() and lazy.values[2] == losses[0].item()


# ------------------------------------------------------------------------------------- cpu and cuda
def test_training_and_acting_on_a_device(stores, device) -> None:
    """Parameters, optimizer state and batches on the device; the same initial parameters as on the CPU
    (drawn there); losses and actions that match a CPU run."""
    prior, _, val = stores
    factory = functools.partial(DiffusionPolicy, **DIFFUSION)
    optim = OptimConfig(lr=1e-3, total_steps=12)
    runs = {}
    for where in (torch.device("cpu"), device):
        policy = build_policy(factory, prior)
        result = train(policy, prior, np.arange(prior.n_steps), 12, 8, optim, 3, progress=False, device=where)
        assert {p.device.type for p in result.params.values()} == {where.type}
        assert {v.device.type for m in result.opt_state.values() for v in m.values()} == {where.type}
        policy.reset_sampler(1)
        actions = policy.act(None, {"state": val.arrays[OBS_STATE_KEY][:3]})
        assert isinstance(actions, np.ndarray) and actions.shape == (3, 4, 3) and np.isfinite(actions).all()
        initial = {k: v.cpu() for k, v in init_params(policy, 3).items()}
        runs[where.type] = (result.losses, actions, initial)
    (cpu_losses, cpu_actions, cpu_init), (losses, actions, init) = runs["cpu"], runs[device.type]
    assert all(torch.equal(init[k], cpu_init[k]) for k in cpu_init)
    np.testing.assert_allclose(losses, cpu_losses, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(actions, cpu_actions, rtol=1e-3, atol=1e-4)


def test_estimators_and_the_encoder_on_a_device(stores, device) -> None:
    prior, target_train, val = stores
    scores = {}
    for where in (torch.device("cpu"), device):
        policy = build_policy(Gelu64, prior).to(where)
        metagrad = run_metagrad(
            policy, prior, val, 0, proxy(), include_target_train=False, target_train_store=target_train
        )
        regression = run_regression(policy, prior, val, 0, proxy(), n_models=4, chunk=2)
        scores[where.type] = (metagrad.scores, regression.info["surrogates"])
        assert metagrad.scores.shape == (prior.n_steps,) and np.isfinite(metagrad.scores).all()
    for cpu, other in zip(scores["cpu"], scores[device.type], strict=True):
        np.testing.assert_allclose(other, cpu, rtol=1e-9, atol=1e-12)

    store = make_store(2, 4, 3, "img", images=True)
    factory = functools.partial(VisionPolicy, image_keys=("image_primary",), cameras={"image_primary": "c"})
    policy = build_policy(functools.partial(factory, **IMAGE), store)
    cpu_features = encode_store(policy, policy.params(), store)
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):  # cuDNN's TF32 default would blur it
        features = encode_store(policy.to(device), policy.params(), store)
    assert features.dtype == np.float32 and features.shape == cpu_features.shape
    np.testing.assert_allclose(features, cpu_features, rtol=1e-3, atol=1e-4)


def test_the_policy_server_on_a_device(stores, device, tmp_path) -> None:
    policy = build_policy(functools.partial(DiffusionPolicy, **DIFFUSION), stores[0])
    path = save_policy(tmp_path / "policy.pt", policy, task="t")
    replies = {}
    for where in ("cpu", str(device)):
        served = load_served(path, where)
        assert served.device == str(resolve_device(where))
        assert next(served.policy.parameters()).device.type == resolve_device(where).type
        served.reset(4)
        replies[where] = served.infer({"state": stores[2].arrays[OBS_STATE_KEY][0]})
        assert replies[where].shape == (4, 3) and replies[where].dtype == np.float32
    np.testing.assert_allclose(replies[str(device)], replies["cpu"], rtol=1e-3, atol=1e-4)

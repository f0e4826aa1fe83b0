"""Image observations: headless rendering, image policies, the two estimator modes, bad input.

Rendering always happens in spawned processes here: Mesa's EGL and TensorFlow (loaded by the RLDS
tests of the same session) crash when they share a process.
"""

from __future__ import annotations

import functools
from multiprocessing import get_context

import numpy as np
import pytest
import torch

from datamil.data.schema import Episode, EpisodeMeta
from datamil.data.store import TrajectoryStore
from datamil.datamodels.features import (
    CleanSurrogate,
    FeatureCache,
    FitConfig,
    encoder_hash,
    feature_store,
    run_image,
)
from datamil.datamodels.proxy import ProxyConfig, smooth_optim
from datamil.errors import DataError, DatamilError, UnknownNameError
from datamil.gl import configure_gl
from datamil.policies.build import build_policy
from datamil.policies.vision import DiffusionImagePolicy, VisionPolicy, random_shift
from datamil.training import gather_batch, init_params

SIZE = 32
TINY = dict(
    channels=(8, 8), strides=(2, 1), keypoints=4, feature_dim=8, hidden=(16, 16), image_size=(SIZE, SIZE)
)


def _frames(actions: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(T, 32, 32, 3) uint8: a bright square whose position encodes the first two action dims."""
    frames = rng.integers(0, 40, (len(actions), SIZE, SIZE, 3), dtype=np.uint8)
    for t, a in enumerate(actions):
        y, x = (np.clip((a[:2] + 1) / 2, 0, 0.99) * (SIZE - 6)).astype(int)
        frames[t, y : y + 6, x : x + 6] = 255
    return frames


def image_episodes(n: int, seed: int, state: bool = True, dataset: str = "toy") -> list[Episode]:
    rng = np.random.default_rng(seed)
    episodes = []
    for i in range(n):
        actions = np.tanh(rng.normal(size=(8 + i % 3, 2))).astype(np.float32)
        obs = {"image_primary": _frames(actions, rng)}
        if state:
            obs["state"] = rng.normal(size=(len(actions), 5)).astype(np.float32)
        episodes.append(Episode(obs, actions, EpisodeMeta(f"{dataset}/{seed}/{i}", dataset)))
    return episodes


@pytest.fixture(scope="module")
def stores() -> tuple[TrajectoryStore, TrajectoryStore, TrajectoryStore]:
    """(prior, target-train, target-val) image stores with a state vector."""
    return tuple(TrajectoryStore.from_episodes(image_episodes(n, s)) for n, s in ((8, 0), (3, 1), (2, 2)))


def tiny_policy(store: TrajectoryStore, cls=VisionPolicy, **kwargs) -> VisionPolicy:
    factory = functools.partial(
        cls, image_keys=("image_primary",), cameras={"image_primary": "corner"}, **TINY
    )
    return build_policy(functools.partial(factory, **kwargs), store)


def in_spawned_process(fn, *args):
    """Run fn(*args) in a fresh "spawn" process (no TensorFlow there) and return its result."""
    with get_context("spawn").Pool(1) as pool:
        return pool.apply(fn, args)


# ------------------------------------------------------------------------------------- rendering
def test_configure_gl_picks_egl_only_without_a_display() -> None:
    env: dict[str, str] = {}
    assert configure_gl(env) == "egl" and env["MUJOCO_GL"] == "egl"
    assert configure_gl({"DISPLAY": ":0"}) is None
    assert configure_gl({"MUJOCO_GL": "osmesa"}) == "osmesa"  # a user's choice is kept


def _render_probe() -> dict:
    from datamil.sim_tasks.render import CameraConfig, FrameRenderer
    from datamil.sim_tasks.suites import make_env

    env = make_env("metaworld/reach", 0)
    env.reset()
    config = CameraConfig.of({"image_primary": "corner", "image_wrist": "gripperPOV"}, (48, 64))
    out = {}
    with FrameRenderer(env.unwrapped.model, config) as renderer:
        frames = renderer.render(env.unwrapped.data)
        out["shapes"] = {k: v.shape for k, v in frames.items()}
        out["dtype"] = str(frames["image_primary"].dtype)
        out["same"] = bool(
            np.array_equal(frames["image_primary"], renderer.render(env.unwrapped.data)["image_primary"])
        )
    try:
        FrameRenderer(env.unwrapped.model, CameraConfig.of({"image_primary": "nope"}))
    except UnknownNameError as error:
        out["unknown"] = str(error)
    env.close()
    return out


@pytest.mark.sim
def test_renderer_gives_configured_views_and_names_valid_cameras() -> None:
    out = in_spawned_process(_render_probe)
    assert out["shapes"] == {"image_primary": (48, 64, 3), "image_wrist": (48, 64, 3)}
    assert out["dtype"] == "uint8" and out["same"], "rendering must be deterministic"
    assert "corner" in out["unknown"] and "gripperPOV" in out["unknown"] and "\n" not in out["unknown"]


@pytest.mark.sim
def test_generator_renders_cameras_per_step_and_stays_state_only_by_default() -> None:
    from datamil.sim_tasks.generate import generate_episodes
    from datamil.sim_tasks.render import CameraConfig

    cams = CameraConfig.of({"image_primary": "corner"}, (32, 32))
    (ep,) = generate_episodes(["metaworld/reach"], 1, 0, max_steps=6, workers=1, progress=False, cameras=cams)
    assert ep.observations["image_primary"].shape == (len(ep), 32, 32, 3)
    assert ep.observations["image_primary"].std() > 0  # a picture, not a blank buffer
    (plain,) = generate_episodes(["metaworld/reach"], 1, 0, max_steps=6, workers=1, progress=False)
    assert set(plain.observations) == {"state"}
    np.testing.assert_array_equal(plain.observations["state"], ep.observations["state"])


# ------------------------------------------------------------------------------------- policies
@pytest.mark.parametrize("cls", [VisionPolicy, DiffusionImagePolicy])
def test_image_policy_loss_is_a_fixed_per_sample_function(cls, stores) -> None:
    policy = tiny_policy(stores[0], cls)
    batch = gather_batch(policy, stores[0], np.arange(6))
    params = init_params(policy, 0)
    loss = policy.per_sample_loss(params, batch)
    assert loss.shape == (6,) and torch.isfinite(loss).all()
    assert torch.equal(loss, policy.per_sample_loss(params, batch))
    grads = torch.func.grad(lambda p: policy.per_sample_loss(p, batch).mean())(params)
    assert all(torch.isfinite(g).all() for g in grads.values())
    assert any(g.abs().sum() > 0 for k, g in grads.items() if k.startswith("encoder.convs"))

    def one(p, sample):
        return policy.per_sample_loss(p, {k: v.unsqueeze(0) for k, v in sample.items()})[0]

    per_sample = torch.func.vmap(torch.func.grad(one), in_dims=(None, 0))(params, batch)
    direct = torch.func.grad(one)(params, {k: v[2] for k, v in batch.items()})
    key = "encoder.convs.image_primary.convs.0.weight"
    torch.testing.assert_close(per_sample[key][2], direct[key], rtol=1e-4, atol=1e-6)


def test_random_shift_is_an_integer_translation_keyed_by_index() -> None:
    images = torch.arange(2 * 1 * 12 * 12, dtype=torch.float32).view(2, 1, 12, 12)
    index = torch.tensor([3, 4])
    shifted = random_shift(images, index, pad=2, seed=0)
    torch.testing.assert_close(shifted, random_shift(images, index, pad=2, seed=0))
    padded = torch.nn.functional.pad(images, (2, 2, 2, 2), mode="replicate")
    for b in range(2):  # some crop of the padded image, exactly
        crops = [padded[b, :, y : y + 12, x : x + 12] for y in range(5) for x in range(5)]
        assert any(torch.allclose(shifted[b], c, atol=1e-4) for c in crops)


def test_augmentation_on_in_training_off_in_eval(stores) -> None:
    policy = tiny_policy(stores[0], shift_pad=4)
    batch = gather_batch(policy, stores[0], np.arange(8))
    params = init_params(policy, 0)
    train_loss = policy.per_sample_loss(params, batch)
    policy.eval()
    clean = policy.per_sample_loss(params, batch)
    policy.train()
    assert not torch.allclose(train_loss, clean)
    surrogate = CleanSurrogate(policy, batch)
    torch.testing.assert_close(surrogate(params), clean.mean())
    assert policy.training, "the surrogate restores train mode"


def test_image_only_policy_and_act(stores) -> None:
    store = TrajectoryStore.from_episodes(image_episodes(3, 5, state=False))
    policy = tiny_policy(store)
    assert policy.batch_keys == ("obs/image_primary", "action") and policy.encoder.state_dim == 0
    actions = policy.act(init_params(policy, 0), {"image_primary": store.arrays["obs/image_primary"][:3]})
    assert actions.shape == (3, 2) and np.all(np.abs(actions) <= 1)
    assert policy.camera_config() == {
        "cameras": {"image_primary": "corner"},
        "size": (SIZE, SIZE),
        "fast": True,
        "samples": 0,
    }
    chunked = tiny_policy(store, DiffusionImagePolicy, horizon=4, n_action_steps=2)
    out = chunked.act(None, {"image_primary": store.arrays["obs/image_primary"][:2]})
    assert out.shape == (2, 4, 2) and chunked.n_action_steps == 2


def test_other_image_sizes_are_resized_or_rejected(stores) -> None:
    store = TrajectoryStore.from_episodes(image_episodes(2, 3))
    big = {"state": np.zeros((2, 5), np.float32), "image_primary": np.zeros((2, 48, 40, 3), np.uint8)}
    assert tiny_policy(store).act(None, big).shape == (2, 2)  # image_size set: resized
    strict = tiny_policy(store, image_size=None)
    with pytest.raises(DataError, match=r"set policy.image_size") as error:
        strict.act(None, big)
    assert "\n" not in str(error.value)


def test_bad_image_inputs_fail_in_one_line(stores) -> None:
    gray = [
        Episode(
            {"image_primary": np.zeros((4, SIZE, SIZE, 1), np.uint8)},
            np.zeros((4, 2), np.float32),
            EpisodeMeta("g", "d"),
        )
    ]
    with pytest.raises(DataError, match="grayscale") as error:
        tiny_policy(TrajectoryStore.from_episodes(gray))
    assert "\n" not in str(error.value)
    with pytest.raises(DataError, match="the data has only"):
        tiny_policy(stores[0], image_keys=("image_wrist",))
    policy = tiny_policy(stores[0])
    with pytest.raises(DataError, match="'image_primary' is missing"):
        policy.act(None, {"state": np.zeros((1, 5), np.float32)})
    with pytest.raises(DataError, match="grayscale"):
        policy.act(
            None,
            {"state": np.zeros((1, 5), np.float32), "image_primary": np.zeros((1, SIZE, SIZE, 1), np.uint8)},
        )


def test_image_key_missing_from_some_episodes_writes_nothing(tmp_path) -> None:
    from datamil.data.rlds import write_rlds

    episodes = image_episodes(2, 0)
    episodes[1].observations.pop("image_primary")
    with pytest.raises(DataError, match="differ from the first episode") as error:
        write_rlds(episodes, tmp_path, "mixed")
    assert "\n" not in str(error.value) and not (tmp_path / "mixed").exists()
    with pytest.raises(DataError, match="standardize"):
        TrajectoryStore.from_episodes(episodes)


def test_image_checkpoint_round_trip(stores, tmp_path) -> None:
    from datamil.checkpoint import load_policy, save_policy

    policy = tiny_policy(stores[0])
    params = init_params(policy, 1)
    loaded = load_policy(save_policy(tmp_path / "p.pt", policy, params), expected="bc_image").policy
    obs = {
        "state": stores[0].arrays["obs/state"][:3],
        "image_primary": stores[0].arrays["obs/image_primary"][:3],
    }
    np.testing.assert_array_equal(policy.act(params, obs), loaded.act(None, obs))
    assert loaded.camera_config() == policy.camera_config()


# ------------------------------------------------------------------------------------- estimators
def test_feature_cache_is_keyed_by_the_encoder_hash(stores, tmp_path) -> None:
    policy = tiny_policy(stores[0])
    params = init_params(policy, 0)
    cache = FeatureCache(tmp_path)
    features = cache.features(policy, params, stores[0])
    assert features.shape == (stores[0].n_steps, policy.encoder.out_dim)
    np.testing.assert_array_equal(cache.features(policy, params, stores[0]), features)
    other = init_params(policy, 1)
    assert encoder_hash(policy, other) != encoder_hash(policy, params)
    (entry,) = list((tmp_path / encoder_hash(policy, params)).iterdir())
    with pytest.raises(DatamilError, match="was made by encoder") as error:
        cache.load(entry, encoder_hash(policy, other), stores[0].n_steps)
    assert "\n" not in str(error.value)
    head_store = feature_store(stores[0], features)
    assert head_store.obs_keys == ["state"] and head_store.n_steps == stores[0].n_steps


@pytest.mark.parametrize("mode", ["frozen", "end_to_end"])
def test_both_estimator_modes_score_every_prior_step(mode, stores, tmp_path) -> None:
    prior, target_train, target_val = stores
    policy = tiny_policy(prior)
    proxy = ProxyConfig(optim=smooth_optim(), batch_size=16).with_steps(6)
    kwargs = {"checkpoint_every": 3} if mode == "end_to_end" else {}
    result = run_image(
        policy,
        prior,
        target_val,
        0,
        proxy,
        mode=mode,
        estimator_kwargs=kwargs,
        fit=FitConfig(steps=5, batch_size=16),
        cache_dir=tmp_path,
        target_train_store=target_train,
    )
    assert result.scores.shape == (prior.n_steps,) and np.all(np.isfinite(result.scores))
    assert result.info["mode"] == mode and np.any(result.scores != 0)
    if mode == "frozen":  # a second seed reuses the fitted encoder and the cached features
        again = run_image(
            policy,
            prior,
            target_val,
            1,
            proxy,
            fit=FitConfig(steps=5, batch_size=16),
            cache_dir=tmp_path,
            target_train_store=target_train,
        )
        assert again.timings["fit_encoder"] < result.timings["fit_encoder"]


def test_image_estimator_needs_an_image_policy(stores) -> None:
    from datamil.policies.mlp import MLPPolicy

    with pytest.raises(DatamilError, match="needs an image policy"):
        run_image(MLPPolicy(5, 2), stores[0], stores[2])


# ------------------------------------------------------------------------------------- end to end
@pytest.mark.slow
def test_selection_over_a_state_free_rlds_prior(tmp_path) -> None:
    """`python -m datamil.select` on RLDS datasets whose episodes carry only camera frames."""
    import json

    from entry_points import run_app_ok, user_env

    from datamil.data.rlds import write_rlds

    prior = write_rlds(image_episodes(8, 0, state=False, dataset="cams"), tmp_path / "rlds", "cams_prior")
    target = write_rlds(image_episodes(4, 1, state=False, dataset="cams"), tmp_path / "rlds", "cams_target")
    tiny = [f"policy.{k}={list(v) if isinstance(v, tuple) else v}".replace(" ", "") for k, v in TINY.items()]
    overrides = [
        "+task=cams", "data=rlds", f"data.prior={prior}",
        f"data.target={target}", "data.n_target_val=1", "policy=bc_image_only", "estimator=image",
        "estimator.fit.steps=5", "estimator.fit.batch_size=16", "estimator.proxy.batch_size=16",
        "estimator.proxy.optim.total_steps=6", "selection.budget=0.25", *tiny,
    ]  # fmt: skip
    run_app_ok("datamil.select", *overrides, env=user_env(tmp_path / "cache"), run_dir=tmp_path / "run")
    selection = json.loads((tmp_path / "run" / "selection.json").read_text())
    assert len(selection["selected"]) == 2 and selection["method"] == "image"

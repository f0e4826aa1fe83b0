"""OXE and real cameras: native-size frames through ingest, the image policy and a selection run, and
every kind of bad image input failing on one line with nothing half-written on disk.

No rendering here: this module reads and writes RLDS, and Mesa's EGL and TensorFlow crash when they
share a process.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("tensorflow_datasets")

import rlds_fixtures as fx  # noqa: E402

from datamil.data.rlds import ingest_rlds, read_rlds, write_rlds  # noqa: E402
from datamil.data.schema import Episode, EpisodeMeta  # noqa: E402
from datamil.data.sources import RLDSSource  # noqa: E402
from datamil.data.store import TrajectoryStore  # noqa: E402
from datamil.datamodels.features import FeatureCache, FitConfig, fit_data, run_image  # noqa: E402
from datamil.datamodels.proxy import ProxyConfig, smooth_optim  # noqa: E402
from datamil.errors import DataError, DatamilError  # noqa: E402
from datamil.policies.build import build_policy  # noqa: E402
from datamil.policies.vision import VisionPolicy  # noqa: E402
from datamil.training import gather_batch, init_params  # noqa: E402
from datamil.training.cotraining import build_mixture  # noqa: E402

FRACTAL_HW, BRIDGE_HW = (256, 320), (256, 256)  # the datasets' published camera sizes
SIZE = 32  # the policy's input size in these tests
TINY = dict(channels=(8, 8), strides=(2, 1), keypoints=4, feature_dim=8, hidden=(16, 16))


@contextlib.contextmanager
def camera_shape(hw: tuple[int, int], channels: int = 3):
    """Make the OXE fixture writers use cameras of size `hw` (and `channels`) instead of the tiny default."""
    image, images = fx._img, fx._images
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(fx, "HW", hw)
        if channels != 3:
            mp.setattr(fx, "_img", lambda c=3, dtype=np.uint8: image(channels if c == 3 else c, dtype))
            mp.setattr(fx, "_images", lambda rng, t, c=3: images(rng, t, channels))
        yield


def _read(path, **kwargs):
    return list(read_rlds(path, progress=False, **kwargs))


def _frames(example: dict, key: str) -> np.ndarray:
    return np.asarray(example["steps"]["observation"][key])


def _leftovers(directory: Path) -> list[str]:
    """Everything in `directory` (a failed write must leave neither the target nor temp folders)."""
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


def tiny_policy(store: TrajectoryStore, use_state: bool = False, **kwargs) -> VisionPolicy:
    settings = dict(image_keys=("image_primary",), image_size=(SIZE, SIZE), use_state=use_state, **TINY)
    return build_policy(functools.partial(VisionPolicy, **{**settings, **kwargs}), store)


@pytest.fixture(scope="module")
def native(tmp_path_factory) -> dict:
    """fractal- and bridge-layout datasets with their real camera sizes, and their stores."""
    root = tmp_path_factory.mktemp("native")
    out = {}
    for name, hw in (("fractal20220817_data", FRACTAL_HW), ("bridge", BRIDGE_HW)):
        with camera_shape(hw):
            path, raw = fx.write_oxe(root / "rlds", name, n=2)
        out[name] = (path, raw, ingest_rlds(path, root / "stores" / name, progress=False))
    return out


# ------------------------------------------------------------------------------------- native cameras
@pytest.mark.parametrize(
    ("name", "raw_key", "hw"),
    [("fractal20220817_data", "image", FRACTAL_HW), ("bridge", "image_0", BRIDGE_HW)],
)
def test_native_frames_land_under_the_standardized_key(native, name, raw_key, hw):
    _, raw, store = native[name]
    assert store.obs_keys == ["image_primary", "state"], "only the registered camera is read"
    frames = store.arrays["obs/image_primary"]
    assert frames.shape == (store.n_steps, *hw, 3) and frames.dtype == np.uint8
    np.testing.assert_array_equal(frames, np.concatenate([_frames(e, raw_key) for e in raw]))


def test_image_policy_resizes_native_frames_and_trains_on_them(native):
    fractal, bridge = native["fractal20220817_data"][2], native["bridge"][2]
    policy = tiny_policy(fractal)
    assert policy.encoder.shapes["image_primary"] == (*FRACTAL_HW, 3)
    params = init_params(policy, 0)
    for store in (fractal, bridge):  # one encoder input size for both cameras
        batch = gather_batch(policy, store, np.arange(5))
        assert policy.encoder.pixels("image_primary", batch["obs/image_primary"], None).shape == (
            5,
            3,
            SIZE,
            SIZE,
        )
        loss = policy.per_sample_loss(params, batch)
        assert loss.shape == (5,) and torch.isfinite(loss).all()
        grads = torch.func.grad(lambda p, b=batch: policy.per_sample_loss(p, b).mean())(params)
        assert all(torch.isfinite(g).all() for g in grads.values())
    mixed = fit_data(policy, [fractal, bridge])  # prior and target of different sizes, one fit store
    assert mixed.arrays["obs/image_primary"].shape[1:] == (SIZE, SIZE, 3)
    assert "obs/state" not in mixed.arrays  # bc_image_only: the datasets' states are not needed


def test_cotraining_mixture_puts_an_oxe_prior_in_the_target_layout(native):
    """A fractal prior (256x320, with a state) co-trained with an image-only 48x64 target: the mixture
    keeps the target's keys and size, and an image policy trains on it."""
    fractal = native["fractal20220817_data"][2]
    target = TrajectoryStore.from_episodes(_image_only(2, 3))
    mixture = build_mixture(target, fractal, fractal.episodes.episode_id[:1], 1.0, 1.0, 4, 0)
    assert mixture.store.obs_keys == ["image_primary"]
    assert mixture.store.arrays["obs/image_primary"].shape[1:] == (48, 64, 3)
    first = fractal.episode_lengths[0]
    assert mixture.store.n_steps == target.n_steps + first
    policy = tiny_policy(mixture.store)
    batch = gather_batch(policy, mixture.store, np.arange(target.n_steps, target.n_steps + 3))
    assert torch.isfinite(policy.per_sample_loss(init_params(policy, 0), batch)).all()
    with pytest.raises(DataError, match="cannot combine stores"):  # the target's state is not in the prior
        build_mixture(fractal, target, target.episodes.episode_id[:1], 1.0, 1.0, 4, 0)


def test_frozen_estimator_over_datasets_of_different_sizes(native, tmp_path):
    fractal, bridge = native["fractal20220817_data"][2], native["bridge"][2]
    policy = tiny_policy(fractal)
    val = bridge.subset([0])
    result = run_image(
        policy,
        fractal,
        val,
        0,
        ProxyConfig(optim=smooth_optim(), batch_size=8).with_steps(3),
        fit=FitConfig(steps=3, batch_size=8),
        cache_dir=tmp_path,
        target_train_store=bridge.subset([1]),
    )
    assert result.scores.shape == (fractal.n_steps,) and np.all(np.isfinite(result.scores))


# ------------------------------------------------------------------------------------- choosing cameras
def test_camera_is_chosen_per_dataset_in_the_data_config(tmp_path):
    path, raw = fx.write_oxe(tmp_path / "rlds", "taco_play", n=3)
    source = RLDSSource(
        prior=str(path),
        target=str(path),
        n_target_val=1,
        cache_dir=str(tmp_path / "cache"),
        prior_image_keys={"rgb_gripper": "image_primary"},
    )
    data = source.load("t")
    assert data.prior.obs_keys == ["image_primary", "state"]  # the registry's image_wrist is not read
    np.testing.assert_array_equal(
        data.prior.arrays["obs/image_primary"], np.concatenate([_frames(e, "rgb_gripper") for e in raw])
    )
    target = TrajectoryStore.concat([data.target_train, data.target_val])
    assert set(target.obs_keys) == {"image_primary", "image_wrist", "state"}  # registry cameras
    by_id = {f"taco_play/train/{i}": _frames(e, "rgb_static") for i, e in enumerate(raw)}
    for i, episode_id in enumerate(target.episodes.episode_id):
        np.testing.assert_array_equal(target.episode(i).observations["image_primary"], by_id[episode_id])
    assert len(list((tmp_path / "cache" / "rlds").iterdir())) == 2, "the override is in the cache key"


def test_bad_camera_overrides_fail_at_setup(tmp_path, native):
    path = native["bridge"][0]
    with pytest.raises(DataError, match=r"no camera 'image_9'.*'image_0', 'image_1'") as error:
        read_rlds(path, image_keys={"image_9": "image_primary"})
    assert "\n" not in str(error.value)
    with pytest.raises(DataError, match="must start with 'image'"):
        read_rlds(path, image_keys={"image_1": "state"})
    with pytest.raises(DataError, match="are mapped to 'image_primary'"):
        read_rlds(path, image_keys={"image_1": "image_primary", "image_2": "image_primary"})
    ours = write_rlds(fx.make_episodes(n=1), tmp_path, "datamil_cams")
    with pytest.raises(DataError, match="already names its cameras"):
        read_rlds(ours, image_keys={"image_primary": "image_wrist"})


# ------------------------------------------------------------------------------------- bad input
def test_camera_missing_from_some_episodes_writes_no_store(native, tmp_path):
    """(a) bridge keeps blank frames for cameras an episode lacks and says so in has_image_i."""
    path = native["bridge"][0]
    with pytest.raises(DataError, match=r"'bridge/train/0' .*no camera 'observation/image_1'.*has_image_1"):
        ingest_rlds(path, tmp_path / "store", progress=False, image_keys={"image_1": "image_primary"})
    assert _leftovers(tmp_path) == []


def test_camera_missing_from_one_dataset_fails_before_training(native, tmp_path):
    """(a) the target has no image_primary at all (its camera is called something else)."""
    prior = native["fractal20220817_data"][2]
    other = TrajectoryStore.from_episodes(_image_only(2, 0, key="image_front"))
    policy = tiny_policy(prior)
    with pytest.raises(DataError, match=r"target_val data has no image 'image_primary'.*image_front"):
        run_image(policy, prior, other, 0, fit=FitConfig(steps=2), cache_dir=tmp_path / "cache")
    assert _leftovers(tmp_path) == []


def test_size_clash_without_resize_fails_before_training(native, tmp_path):
    """(b) image_size null keeps native sizes: a 256x256 target against a 256x320 prior must not mix."""
    fractal, bridge = native["fractal20220817_data"][2], native["bridge"][2]
    policy = tiny_policy(fractal, image_size=None)
    with pytest.raises(DataError, match=r"\(256, 256\) in the target_val data.*set policy.image_size") as e:
        run_image(policy, fractal, bridge, 0, fit=FitConfig(steps=2), cache_dir=tmp_path / "cache")
    assert "\n" not in str(e.value) and _leftovers(tmp_path) == []
    with pytest.raises(DataError, match=r"'obs/image_primary' is \(256, 320, 3\).*\(256, 256, 3\)"):
        TrajectoryStore.concat([fractal, bridge])


def test_grayscale_camera_is_refused_unless_converted(tmp_path):
    """(c) a one-channel camera where the registry expects RGB."""
    with camera_shape((16, 16), channels=1):
        path, raw = fx.write_oxe(tmp_path / "rlds", "fractal20220817_data", n=2)
    with pytest.raises(DataError, match=r"'observation/image' is grayscale.*grayscale_to_rgb=true") as e:
        ingest_rlds(path, tmp_path / "store", progress=False)
    assert "\n" not in str(e.value) and not (tmp_path / "store").exists()
    episode = _read(path, grayscale_to_rgb=True)[0]
    frames = episode.observations["image_primary"]
    assert frames.shape == (len(episode), 16, 16, 3)
    for channel in range(3):
        np.testing.assert_array_equal(frames[..., channel], _frames(raw[0], "image")[..., 0])


def test_grayscale_in_our_own_layout_is_converted_on_request(tmp_path):
    episodes = fx.make_episodes(n=2, image=False)
    for episode in episodes:
        episode.observations["image_primary"] = np.full((len(episode), 8, 8, 1), 7, np.uint8)
    path = write_rlds(episodes, tmp_path, "datamil_gray")
    assert _read(path)[0].observations["image_primary"].shape[-1] == 1  # stored as written
    store = TrajectoryStore.from_episodes(_read(path))
    with pytest.raises(DataError, match="grayscale.*grayscale_to_rgb=true"):
        tiny_policy(store)
    converted = _read(path, grayscale_to_rgb=True)[0].observations["image_primary"]
    assert converted.shape[-1] == 3 and np.all(converted == 7)


def test_corrupt_frame_is_one_line_and_writes_no_store(native, tmp_path):
    """(d) one PNG in the middle of a valid record (the shard's checksums still match)."""
    import shutil

    import tensorflow as tf

    broken = tmp_path / "broken" / "fractal20220817_data" / "0.1.0"
    shutil.copytree(native["fractal20220817_data"][0], broken)
    (shard,) = broken.glob("*.tfrecord*")
    records = [r.numpy() for r in tf.data.TFRecordDataset(str(shard))]
    example = tf.train.Example.FromString(records[1])
    frames = example.features.feature["steps/observation/image"].bytes_list.value
    frames[3] = frames[3][:100]  # a truncated PNG
    records[1] = example.SerializeToString()
    with tf.io.TFRecordWriter(str(shard)) as writer:
        for record in records:
            writer.write(record)
    store = tmp_path / "stores" / "fractal"
    with pytest.raises(DataError, match=r"unreadable data in episode #1 .*Invalid PNG data") as error:
        ingest_rlds(broken, store, progress=False)
    assert "\n" not in str(error.value) and "function_node" not in str(error.value)
    assert _leftovers(store.parent) == []


def test_feature_cache_of_another_encoder_is_refused_and_kept(native, tmp_path):
    """(e) an entry whose recorded encoder hash is not the encoder asking for it."""
    store = native["bridge"][2]
    policy = tiny_policy(store)
    params = init_params(policy, 0)
    cache = FeatureCache(tmp_path)
    cache.features(policy, params, store)
    (entry,) = [p for p in tmp_path.glob("*/*") if p.is_dir()]
    meta = json.loads((entry / "meta.json").read_text())
    (entry / "meta.json").write_text(json.dumps({**meta, "encoder_hash": "0" * 16}))
    before = (entry / "features.npy").read_bytes()
    with pytest.raises(DatamilError, match="was made by encoder 0{16}, not .*delete it") as error:
        cache.features(policy, params, store)
    assert "\n" not in str(error.value) and (entry / "features.npy").read_bytes() == before


# ------------------------------------------------------------------------------------- end to end
def _image_only(n: int, seed: int, key: str = "image_primary", hw=(48, 64)) -> list[Episode]:
    """Episodes with one camera, 7-d actions and no state, like many OXE and real-arm datasets."""
    rng = np.random.default_rng(seed)
    episodes = []
    for i in range(n):
        actions = np.tanh(rng.normal(size=(6 + i % 2, 7))).astype(np.float32)
        frames = rng.integers(0, 256, (len(actions), *hw, 3), dtype=np.uint8)
        episodes.append(Episode({key: frames}, actions, EpisodeMeta(f"cams/{seed}/{i}", "cams", "t")))
    return episodes


def _select(
    tmp_path: Path, prior: Path, target: Path, size: str = f"[{SIZE},{SIZE}]"
) -> subprocess.CompletedProcess:
    tiny = [f"policy.{k}={list(v) if isinstance(v, tuple) else v}".replace(" ", "") for k, v in TINY.items()]
    command = [
        sys.executable, "-m", "datamil.select", "+task=cams", "data=rlds", f"data.prior={prior}",
        f"data.target={target}", "data.n_target_val=1", "policy=bc_image_only", "estimator=image",
        f"policy.image_size={size}", "estimator.fit.steps=3", "estimator.fit.batch_size=8",
        "estimator.proxy.batch_size=8", "estimator.proxy.optim.total_steps=3", "selection.budget=0.5",
        f"hydra.run.dir={tmp_path / 'run'}", *tiny,
    ]  # fmt: skip
    env = {**os.environ, "DATAMIL_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)


def test_select_over_an_image_only_prior_with_an_oxe_target(native, tmp_path):
    """`python -m datamil.select` with data=rlds: an image-only prior (48x64, no state) and a bridge-layout
    target (256x256, with a state the policy ignores), policy=bc_image_only, estimator=image (frozen)."""
    prior = write_rlds(_image_only(4, 0), tmp_path / "rlds", "cams_prior")
    done = _select(tmp_path, prior, native["bridge"][0])
    assert done.returncode == 0, done.stderr[-2000:]
    selection = json.loads((tmp_path / "run" / "selection.json").read_text())
    assert selection["method"] == "image" and len(selection["selected"]) == 2
    assert set(selection["selected"]) <= {f"cams/0/{i}" for i in range(4)}


def test_selection_refuses_a_size_clash_before_scoring(native, tmp_path):
    """(b) through the selection stage: the error comes before any score, selection or report is written
    (the CLIs print a DatamilError as one line, see test_pipeline)."""
    from datamil.data.sources import TaskData
    from datamil.selection.methods import SelectionConfig
    from datamil.selection.pipeline import run_selection

    bridge = native["bridge"][2]
    prior = TrajectoryStore.from_episodes(_image_only(2, 0))
    data = TaskData("t", prior, bridge.subset([0]), bridge.subset([1]))
    factory = functools.partial(VisionPolicy, image_keys=("image_primary",), image_size=None, **TINY)
    estimate = functools.partial(run_image, fit=FitConfig(steps=2), cache_dir=tmp_path / "cache")
    with pytest.raises(DataError, match=r"in the target_train data.*set policy.image_size") as error:
        run_selection(
            data, factory, estimate, "image", SelectionConfig(budget=0.5), [0], tmp_path / "run", {}
        )
    assert "\n" not in str(error.value) and _leftovers(tmp_path) == []

"""OXE standardization: tiny real datasets with each dataset's published feature structure, read back."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("tensorflow_datasets")

import rlds_fixtures as fx  # noqa: E402

from datamil.data import oxe, oxe_actions, oxe_registry  # noqa: E402
from datamil.data.rlds import read_rlds  # noqa: E402
from datamil.data.sources import RLDSSource  # noqa: E402
from datamil.errors import DataError, UnknownNameError  # noqa: E402


@pytest.fixture(scope="module")
def oxe_dirs(tmp_path_factory):
    """name -> (version dir, raw examples) for every OXE layout, written once per module."""
    root = tmp_path_factory.mktemp("oxe")
    return {name: fx.write_oxe(root, name) for name in fx.OXE_WRITERS}


def _read(path, **kwargs):
    return list(read_rlds(path, progress=False, **kwargs))


# ---------------------------------------------------------------- gripper conventions (pure numpy)
def test_relative_gripper_integrates_commands():
    assert np.array_equal(oxe.gripper_from_relative(fx.FRACTAL_GRIPPER), fx.FRACTAL_GRIPPER_ABS)
    assert np.array_equal(oxe.gripper_from_relative(fx.UR5_GRIPPER), fx.UR5_GRIPPER_ABS)
    assert np.array_equal(oxe.gripper_from_relative(np.zeros(4)), np.ones(4))  # never commanded: open


def test_continuous_gripper_binarizes_towards_next_state():
    assert np.allclose(oxe.gripper_from_continuous(fx.BRIDGE_GRIPPER), fx.BRIDGE_GRIPPER_ABS)
    assert np.array_equal(oxe.gripper_from_continuous(np.array([0.5, 0.3, 1.0])), [1.0, 1.0, 1.0])


def test_signed_gripper_maps_to_unit_interval():
    assert np.array_equal(oxe.gripper_from_signed(fx.TACO_GRIPPER), fx.TACO_GRIPPER_ABS)


# ---------------------------------------------------------------- registry contract
def test_unknown_dataset_lists_valid_names():
    with pytest.raises(UnknownNameError) as info:
        oxe.get_standardization("not_a_dataset")
    for name in ("fractal20220817_data", "bridge", "taco_play", "berkeley_autolab_ur5", "datamil_metaworld"):
        assert name in str(info.value)


@pytest.mark.parametrize("name", oxe.STANDARDIZATIONS.names())
def test_every_entry_declares_its_action(name):
    entry = oxe.get_standardization(name)
    assert any(path.startswith("action") for path in entry.required), "entry must declare its raw action keys"
    assert entry.action_convention in oxe_actions.TRANSFORMS
    if entry.action_convention in oxe_actions.EEF_TRANSFORMS:
        assert entry.action_dim == oxe.COMMON_ACTION_DIM


# ---------------------------------------------------------------- each dataset, standardized
def _steps(example):
    return example["steps"]


def test_fractal(oxe_dirs):
    path, raw = oxe_dirs["fractal20220817_data"]
    episodes = _read(path)
    assert [e.meta.episode_id for e in episodes] == [f"fractal20220817_data/train/{i}" for i in range(3)]
    for episode, example in zip(episodes, raw, strict=True):
        act, obs = _steps(example)["action"], _steps(example)["observation"]
        assert np.allclose(episode.actions[:, :3], act["world_vector"])
        assert np.allclose(episode.actions[:, 3:6], act["rotation_delta"])
        assert np.array_equal(episode.actions[:, 6], fx.FRACTAL_GRIPPER_ABS)
        assert np.allclose(
            episode.observations["state"],
            np.concatenate([obs["base_pose_tool_reached"], obs["gripper_closed"]], 1),
        )
        assert np.array_equal(episode.observations["image_primary"], obs["image"])
        assert set(episode.observations) == {"state", "image_primary"}
        assert episode.language_instruction == obs["natural_language_instruction"][0]
        assert episode.meta.dataset == "fractal20220817_data"
    assert [e.meta.success for e in episodes] == [True, False, None]  # aspects/success when has_aspects


def test_bridge(oxe_dirs):
    path, raw = oxe_dirs["bridge"]
    for episode, example in zip(_read(path), raw, strict=True):
        steps = _steps(example)
        assert np.allclose(episode.actions[:, :6], steps["action"][:, :6])
        assert np.allclose(episode.actions[:, 6], fx.BRIDGE_GRIPPER_ABS)
        assert np.allclose(episode.observations["state"], steps["observation"]["state"])
        assert np.array_equal(episode.observations["image_primary"], steps["observation"]["image_0"])
        assert set(episode.observations) == {"state", "image_primary"}
        assert episode.language_instruction == steps["language_instruction"][0]
        assert episode.meta.task == episode.language_instruction


def test_oxe_bridge_layout_reads_by_its_name(tmp_path):
    """The published OXE `bridge` 0.1.0 (the README's example): a dict action with a boolean open_gripper,
    one camera, language in the observation. The flat BridgeData V2 layout under the same name is test_bridge."""
    path, raw = fx.write_row(tmp_path / "rlds", oxe_registry.table_rows()["bridge"], n=3)
    assert path.parent.name == "bridge"
    for episode, example in zip(_read(path), raw, strict=True):
        act, obs = _steps(example)["action"], _steps(example)["observation"]
        np.testing.assert_allclose(episode.actions[:, :3], act["world_vector"])
        np.testing.assert_allclose(episode.actions[:, 3:6], act["rotation_delta"])
        np.testing.assert_array_equal(episode.actions[:, 6], act["open_gripper"].astype(np.float32))
        np.testing.assert_allclose(episode.observations["state"], obs["state"])
        np.testing.assert_array_equal(episode.observations["image_primary"], obs["image"])
        assert episode.language_instruction == obs["natural_language_instruction"][0]
    data = RLDSSource(
        prior=str(path), target=str(path), n_target_val=1, cache_dir=str(tmp_path / "cache")
    ).load("t")
    assert data.prior.obs_keys == ["image_primary", "state"] and data.prior.n_episodes == 3


def test_taco_play(oxe_dirs):
    path, raw = oxe_dirs["taco_play"]
    for episode, example in zip(_read(path), raw, strict=True):
        act, obs = _steps(example)["action"], _steps(example)["observation"]
        assert np.allclose(episode.actions[:, :6], act["rel_actions_world"][:, :6])
        assert np.array_equal(episode.actions[:, 6], fx.TACO_GRIPPER_ABS)
        assert np.allclose(episode.observations["state"], obs["robot_obs"][:, :7])  # tcp pose + gripper width
        assert np.array_equal(episode.observations["image_primary"], obs["rgb_static"])
        assert np.array_equal(episode.observations["image_wrist"], obs["rgb_gripper"])
        assert episode.language_instruction == obs["natural_language_instruction"][0]


def test_berkeley_autolab_ur5(oxe_dirs):
    path, raw = oxe_dirs["berkeley_autolab_ur5"]
    episodes = _read(path)
    for episode, example in zip(episodes, raw, strict=True):
        act, obs = _steps(example)["action"], _steps(example)["observation"]
        assert np.allclose(episode.actions[:, :3], act["world_vector"])
        assert np.allclose(episode.actions[:, 3:6], act["rotation_delta"])
        assert np.array_equal(episode.actions[:, 6], fx.UR5_GRIPPER_ABS)
        assert np.allclose(episode.observations["state"], obs["robot_state"][:, 6:14])  # ee pose + gripper
        assert np.array_equal(episode.observations["image_primary"], obs["image"])
        assert np.array_equal(episode.observations["image_wrist"], obs["hand_image"])
        assert episode.language_instruction == obs["natural_language_instruction"][0]
        assert np.array_equal(episode.rewards, _steps(example)["reward"])
        assert np.array_equal(episode.is_last, _steps(example)["is_last"])


def test_common_action_space_across_datasets(oxe_dirs):
    for name, (path, _) in oxe_dirs.items():
        for episode in _read(path, max_episodes=1):
            assert episode.actions.shape[1] == 7 and episode.actions.dtype == np.float32, name
            assert np.all((episode.actions[:, 6] >= 0) & (episode.actions[:, 6] <= 1)), name


def test_images_off_drops_cameras(oxe_dirs):
    path, raw = oxe_dirs["taco_play"]
    episode = _read(path, images=False, max_episodes=1)[0]
    assert set(episode.observations) == {"state"}
    assert np.allclose(episode.actions[:, :6], _steps(raw[0])["action"]["rel_actions_world"][:, :6])


def test_ids_index_the_whole_split_under_slicing(oxe_dirs):
    path, _ = oxe_dirs["bridge"]
    ids = [e.meta.episode_id for e in _read(path, split="train[1:]")]
    assert ids == ["bridge/train/1", "bridge/train/2"]


# ---------------------------------------------------------------- malformed raw data
def test_wrong_layout_names_the_missing_key(oxe_dirs):
    path, _ = oxe_dirs["taco_play"]
    with pytest.raises(DataError, match=r"taco_play/train/0.*'action/world_vector' is missing"):
        _read(path, standardization="berkeley_autolab_ur5")


def test_wrong_action_shape_is_named(oxe_dirs):
    path, _ = oxe_dirs["bridge"]  # its flat (7,) action read as taco_play's dict action
    with pytest.raises(DataError, match="rel_actions_world"):
        _read(path, standardization="taco_play")


def test_nan_raw_action_names_dataset_episode_and_key(tmp_path):
    rng = np.random.default_rng(1)
    good, bad = fx.fractal_example(rng, 0), fx.fractal_example(rng, 1)
    bad["steps"]["action"]["world_vector"][3, 1] = np.nan
    path = fx.write_raw(tmp_path, "fractal20220817_data", fx.fractal_features(), [good, bad])
    episodes = read_rlds(path, progress=False)
    assert next(episodes).meta.episode_id == "fractal20220817_data/train/0"
    with pytest.raises(DataError, match=r"fractal20220817_data/train/1.*action/world_vector.*NaN.*step 3"):
        next(episodes)

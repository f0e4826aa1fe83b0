"""The OXE registry as data: every row read back from a tiny dataset with its recorded spec, the action
vocabulary on known answers, and datasets mapped by config alone (docs/oxe.md's worked example included)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import yaml

pytest.importorskip("tensorflow_datasets")

import rlds_fixtures as fx  # noqa: E402

from datamil.data import oxe, oxe_actions, oxe_registry  # noqa: E402
from datamil.data.rlds import read_rlds  # noqa: E402
from datamil.data.sources import RLDSSource  # noqa: E402
from datamil.errors import DataError, UnknownNameError  # noqa: E402

ROWS = oxe_registry.table_rows()
DOCS = Path(__file__).resolve().parents[1] / "docs" / "oxe.md"


@pytest.fixture(scope="session")
def row_dirs(tmp_path_factory) -> dict:
    """name -> (version dir, raw examples): every registry row's layout, 2 episodes of 3 steps, written once."""
    root = tmp_path_factory.mktemp("rows")
    return {name: fx.write_row(root, row) for name, row in ROWS.items()}


def _raw(steps: dict, keys) -> np.ndarray:
    """The test's own reading of concatenated, sliced keys: (T, D) float32."""
    parts = []
    for key in keys:
        path, start, stop = oxe_registry.parse_key(key)
        value = np.asarray(oxe.lookup(steps, path), np.float32)
        parts.append(value.reshape(len(value), -1)[:, start:stop])
    return np.concatenate(parts, axis=1)


# ---------------------------------------------------------------- the table
COMMON_LOADER = (  # the datasets the common OXE loader standardizes (its builder names)
    "fractal20220817_data kuka bridge_dataset taco_play jaco_play berkeley_cable_routing roboturk "
    "nyu_door_opening_surprising_effectiveness viola berkeley_autolab_ur5 toto language_table "
    "columbia_cairlab_pusht_real stanford_kuka_multimodal_dataset_converted_externally_to_rlds "
    "nyu_rot_dataset_converted_externally_to_rlds stanford_hydra_dataset_converted_externally_to_rlds "
    "austin_buds_dataset_converted_externally_to_rlds nyu_franka_play_dataset_converted_externally_to_rlds "
    "maniskill_dataset_converted_externally_to_rlds furniture_bench_dataset_converted_externally_to_rlds "
    "cmu_franka_exploration_dataset_converted_externally_to_rlds ucsd_kitchen_dataset_converted_externally_to_rlds "
    "ucsd_pick_and_place_dataset_converted_externally_to_rlds austin_sailor_dataset_converted_externally_to_rlds "
    "austin_sirius_dataset_converted_externally_to_rlds bc_z utokyo_pr2_opening_fridge_converted_externally_to_rlds "
    "utokyo_pr2_tabletop_manipulation_converted_externally_to_rlds "
    "utokyo_xarm_pick_and_place_converted_externally_to_rlds utokyo_xarm_bimanual_converted_externally_to_rlds "
    "robo_net berkeley_mvp_converted_externally_to_rlds berkeley_rpt_converted_externally_to_rlds "
    "kaist_nonprehensile_converted_externally_to_rlds stanford_mask_vit_converted_externally_to_rlds "
    "tokyo_u_lsmo_converted_externally_to_rlds dlr_sara_pour_converted_externally_to_rlds "
    "dlr_sara_grid_clamp_converted_externally_to_rlds dlr_edan_shared_control_converted_externally_to_rlds "
    "asu_table_top_converted_externally_to_rlds stanford_robocook_converted_externally_to_rlds "
    "imperialcollege_sawyer_wrist_cam iamlab_cmu_pickup_insert_converted_externally_to_rlds uiuc_d3field "
    "utaustin_mutex berkeley_fanuc_manipulation cmu_playing_with_food cmu_play_fusion cmu_stretch gnm_dataset "
    "aloha_static_dataset aloha_dagger_dataset aloha_mobile_dataset fmb_dataset dobbe roboset rh20t mujoco_manip"
).split()


def test_table_covers_the_oxe_datasets():
    names = oxe.STANDARDIZATIONS.names()
    assert len(COMMON_LOADER) == 58 and not set(COMMON_LOADER) - set(names)
    assert "bridge" in ROWS  # the Open X-Embodiment copy of bridge_dataset
    for row in ROWS.values():
        assert row.spec_source in ("published", "inferred"), row.name
        assert row.spec, f"{row.name} records no spec"
        for name in (row.name, *row.aliases):
            assert name in names and oxe.get_standardization(name) is oxe.get_standardization(row.name)


@pytest.mark.parametrize("name", sorted(ROWS))
def test_row_reads_a_dataset_with_its_published_spec(row_dirs, name):
    row, (path, examples) = ROWS[name], row_dirs[name]
    entry = oxe.get_standardization(name)
    episodes = list(read_rlds(path, progress=False))
    assert len(episodes) == len(examples)
    for index, (episode, example) in enumerate(zip(episodes, examples, strict=True)):
        steps = example["steps"]
        t = len(steps["is_first"])
        assert episode.actions.shape == (t, entry.action_dim) and np.isfinite(episode.actions).all()
        _check_action(row, episode.actions, _raw(steps, row.action_keys))
        if row.state_keys:
            np.testing.assert_allclose(episode.observations["state"], _raw(steps, row.state_keys))
        cameras = {ours: oxe_registry.camera_path(raw) for raw, ours in row.cameras.items()}
        assert set(episode.observations) == set(cameras) | ({"state"} if row.state_keys else set())
        for ours, raw in cameras.items():
            np.testing.assert_array_equal(episode.observations[ours], oxe.lookup(steps, raw))
        assert episode.language_instruction == (fx.row_text(name, index) if row.language_key else "")
        assert episode.meta.success == _success(row, example)


def _check_action(row, actions: np.ndarray, raw: np.ndarray) -> None:
    spec = row.action
    reads_gripper = oxe_actions.gripper_reads_data(spec.gripper)
    arm = raw[:, :-1] if reads_gripper else raw
    if spec.transform not in oxe_actions.EEF_TRANSFORMS:
        np.testing.assert_allclose(actions[:, : arm.shape[1]], arm)
        return
    n_pos = arm.shape[1] - oxe_actions.ROTATIONS.get(spec.rotation).width
    np.testing.assert_allclose(actions[:, :n_pos], arm[:, :n_pos])
    assert not actions[:, n_pos:3].any()
    if spec.rotation == "euler":
        np.testing.assert_allclose(actions[:, 3:6], arm[:, n_pos:])
    gripper = actions[:, 6]
    assert ((gripper >= 0) & (gripper <= 1)).all()
    last = np.clip(raw[:, -1] / spec.gripper_scale, 0, 1)
    expected = {"open_is_1": last, "close_is_1": 1 - last, "always_open": 1.0, "always_closed": 0.0}
    if spec.gripper in expected:
        np.testing.assert_allclose(gripper, np.broadcast_to(expected[spec.gripper], gripper.shape))


def _success(row, example: dict) -> bool | None:
    if not row.success_key:
        return None
    if row.success_known_key and not oxe.lookup(example, row.success_known_key):
        return None
    return bool(oxe.lookup(example, row.success_key))


def test_a_row_with_a_key_its_spec_lacks_fails_on_one_line():
    data = {"spec": {"action": "float32[7]"}, "action_keys": ["action"], "action_transform": "delta_eef"}
    row = oxe_registry.row_from_data("toy", {**data, "gripper": "open_is_1", "state_keys": ["observation/x"]})
    with pytest.raises(
        DataError, match=r"toy' has no step key 'observation/x'; its step keys are \['action'\]"
    ):
        oxe_registry.check_keys(row, oxe_registry.flatten(row.spec), {}, "toy'")
    with pytest.raises(DataError, match=r"give 9 values; delta_eef with rotation euler needs 3 position"):
        row = oxe_registry.row_from_data(
            "toy", {**data, "gripper": "open_is_1", "spec": {"action": "float32[9]"}}
        )
        oxe_registry.check_keys(row, oxe_registry.flatten(row.spec), {}, "toy")
    with pytest.raises(DataError, match=r"bad feature 'float\[7\]'; write dtype, dtype\[shape\]"):
        oxe_registry.parse_leaf("float[7]", "toy")


def test_keys_with_slices_and_slashes():
    assert oxe_registry.parse_key("observation/robot_obs[0:7]") == ("observation/robot_obs", 0, 7)
    assert oxe_registry.parse_key("action[6]") == ("action", 6, 7)
    assert oxe_registry.parse_key("action[-1]") == ("action", -1, None)
    assert oxe_registry.parse_key("state[-3:]") == ("state", -3, None)
    tree = {"action": {"future/xyz": 1, "future": {"other": 2}}}
    assert oxe.lookup(tree, "action/future/xyz") == 1 and oxe.lookup(tree, "action/future/other") == 2
    with pytest.raises(KeyError):
        oxe.lookup(tree, "action/future/missing")


# ---------------------------------------------------------------- the vocabulary, on known answers
def _convert(action: np.ndarray, **spec) -> np.ndarray:
    defaults = {"keys": (("action", None, None),), "transform": "delta_eef"}
    return oxe_actions.convert_action(oxe_actions.ActionSpec(**{**defaults, **spec}), {"action": action})


def test_rotations_become_roll_pitch_yaw():
    from scipy.spatial.transform import Rotation

    rpy = np.array([[0.1, -0.2, 0.3]])
    quat = Rotation.from_euler("xyz", rpy).as_quat()
    rotvec = Rotation.from_euler("xyz", rpy).as_rotvec()
    for rotation, values in (("euler", rpy), ("quaternion", quat), ("axis_angle", rotvec)):
        out = _convert(
            np.concatenate([[[1, 2, 3]], values, [[1]]], 1), rotation=rotation, gripper="open_is_1"
        )
        np.testing.assert_allclose(out, [[1, 2, 3, 0.1, -0.2, 0.3, 1]], atol=1e-6)
    out = _convert(np.array([[1.0, 2, 3, 0.5, -1]]), rotation="yaw", gripper="signed_close_is_1")
    np.testing.assert_allclose(out, [[1, 2, 3, 0, 0, 0.5, 1]])  # -1 = open
    out = _convert(np.array([[1.0, 2]]), rotation="none", gripper="always_open")  # planar: dz 0
    np.testing.assert_allclose(out, [[1, 2, 0, 0, 0, 0, 1]])


def test_gripper_conventions_give_one_for_open():
    values = np.array([0.0, 1.0, 0.4])
    np.testing.assert_allclose(oxe_actions.GRIPPERS.get("open_is_1")(values), [0, 1, 0.4])
    np.testing.assert_allclose(oxe_actions.GRIPPERS.get("close_is_1")(values), [1, 0, 0.6])
    np.testing.assert_allclose(oxe_actions.GRIPPERS.get("signed_close_is_1")(np.array([1, -1])), [0, 1])
    scaled = _convert(np.array([[0.0, 0, 0, 0, 0, 0, 255]]), gripper="close_is_1", gripper_scale=255)
    assert scaled[0, 6] == 0.0  # 255 = closed
    joints = _convert(np.array([[0.1, 0.2, 1.0]]), transform="joint_position", gripper="close_is_1")
    np.testing.assert_allclose(joints, [[0.1, 0.2, 0.0]])  # kept, the gripper flipped to 1 = open


def test_vocabulary_typos_list_the_valid_names():
    with pytest.raises(UnknownNameError, match=r"unknown gripper convention 'opn'.*open_is_1.*relative"):
        oxe_actions.ActionSpec((("action", None, None),), "delta_eef", gripper="opn").validate()
    with pytest.raises(
        UnknownNameError, match=r"unknown action transform 'delta'.*delta_eef.*joint_position"
    ):
        oxe_actions.ActionSpec((("action", None, None),), "delta", gripper="open_is_1").validate()
    with pytest.raises(DataError, match="needs a gripper convention; use always_open"):
        oxe_actions.ActionSpec((("action", None, None),), "delta_eef").validate()


# ---------------------------------------------------------------- datasets mapped by config
def docs_mapping() -> dict:
    """The worked example of docs/oxe.md: the yaml block that sets `mapping`."""
    blocks = re.findall(r"```yaml\n(.*?)```", DOCS.read_text(), flags=re.S)
    (config,) = [yaml.safe_load(b) for b in blocks if re.search(r"^mapping:", b, flags=re.M)]
    return config["mapping"]


MY_ARM = oxe_registry.DatasetRow(  # the dataset the worked example describes
    name="my_arm_demos",
    action_keys=("action",),
    action_transform="native",
    spec=oxe_registry.parse_spec(
        {
            "action": {"delta_xyz": "float32[3]", "delta_rpy": "float32[3]", "gripper": "float32"},
            "instruction": "string",
            "observation": {
                "front_rgb": "image[480,640,3]",
                "wrist_rgb": "image[480,640,3]",
                "joint_positions": "float32[7]",
                "gripper_width": "float32[1]",
            },
        },
        "my_arm_demos",
    ),
    episode=oxe_registry.parse_spec({"episode_metadata": {"success": "bool"}}, "my_arm_demos"),
    language_key="instruction",
)


@pytest.fixture(scope="module")
def my_arm(tmp_path_factory):
    return fx.write_row(tmp_path_factory.mktemp("my_arm"), MY_ARM, n=3)


def _source(tmp_path, path, **kwargs) -> RLDSSource:
    """The dataset as prior and target, in raw units (these tests check the mapping, not normalization)."""
    settings = dict(
        prior=str(path), target=str(path), n_target_val=1, cache_dir=str(tmp_path), normalization="none"
    )
    return RLDSSource(**{**settings, **kwargs})


def test_docs_example_maps_an_unknown_dataset(my_arm, tmp_path):
    path, raw = my_arm
    data = _source(tmp_path, path, mapping=docs_mapping()).load("t")
    assert data.prior.obs_keys == ["image_primary", "image_wrist", "state"]
    for i, example in enumerate(raw):
        episode, steps = data.prior.episode(i), example["steps"]
        act, obs = steps["action"], steps["observation"]
        expected = np.concatenate(
            [act["delta_xyz"], act["delta_rpy"], 1 - np.clip(act["gripper"], 0, 1)[:, None]], 1
        )
        np.testing.assert_allclose(episode.actions, expected, rtol=1e-6)
        np.testing.assert_allclose(
            episode.observations["state"], np.concatenate([obs["joint_positions"], obs["gripper_width"]], 1)
        )
        np.testing.assert_array_equal(episode.observations["image_wrist"], obs["wrist_rgb"])
        assert episode.meta.task == fx.row_text("my_arm_demos", i)
        assert episode.meta.success == bool(example["episode_metadata"]["success"])


def test_unknown_dataset_without_mapping_says_how_to_map_it(my_arm, tmp_path):
    with pytest.raises(
        UnknownNameError, match=r"unknown OXE dataset 'my_arm_demos'.*map it by config: data.mapping="
    ) as error:
        _source(tmp_path, my_arm[0]).load("t")
    assert "\n" not in str(error.value)


def test_wrong_mapping_key_lists_the_real_keys(my_arm, tmp_path):
    mapping = {**docs_mapping(), "state_keys": ["observation/joint_pos"]}
    with pytest.raises(
        DataError,
        match=r"no step key 'observation/joint_pos'; its step keys are \[.*'observation/joint_positions'",
    ) as error:
        _source(tmp_path, my_arm[0], mapping=mapping).load("t")
    assert "\n" not in str(error.value) and not list(tmp_path.glob("rlds/*"))
    for camera in ("front", "joint_positions"):  # missing, and not an image
        with pytest.raises(
            DataError, match=rf"no camera '{camera}'; its cameras are \['front_rgb', 'wrist_rgb'\]"
        ):
            _source(
                tmp_path, my_arm[0], mapping={**docs_mapping(), "cameras": {camera: "image_primary"}}
            ).load("t")
    with pytest.raises(DataError, match=r"unknown field\(s\) \['gripper_convention'\]; valid: \['cameras'"):
        _source(tmp_path, my_arm[0], mapping={**docs_mapping(), "gripper_convention": "x"}).load("t")
    with pytest.raises(DataError, match="needs action_keys"):
        _source(tmp_path, my_arm[0], mapping={"action_transform": "delta_eef"}).load("t")


def test_config_overrides_the_state_of_a_registered_dataset(tmp_path):
    path, raw = fx.write_oxe(tmp_path / "rlds", "taco_play", n=3)
    data = _source(tmp_path, path, mapping={"state_keys": ["observation/robot_obs"]}).load("t")
    for i, example in enumerate(raw):
        np.testing.assert_allclose(
            data.prior.episode(i).observations["state"], example["steps"]["observation"]["robot_obs"]
        )
        np.testing.assert_allclose(
            data.prior.episode(i).actions[:, :6], example["steps"]["action"]["rel_actions_world"][:, :6]
        )


def test_mapping_over_bridge_keeps_the_layout_the_data_has(tmp_path):
    """A flat BridgeData V2 export named `bridge`: the mapping applies to the layout the data has."""
    path, raw = fx.write_oxe(tmp_path / "rlds", "bridge", n=3)
    data = _source(tmp_path, path, mapping={"state_keys": []}).load("t")
    assert data.prior.obs_keys == ["image_primary"]
    for i, example in enumerate(raw):
        np.testing.assert_allclose(data.prior.episode(i).actions[:, :6], example["steps"]["action"][:, :6])

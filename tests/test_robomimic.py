"""robomimic hdf5 reader, on real files written in robomimic's layout with h5py."""

import json

import h5py
import numpy as np
import pytest

from datamil.data.robomimic_hdf5 import demo_names, read_robomimic
from datamil.data.store import TrajectoryStore
from datamil.errors import DataError


def write_robomimic(path, lengths, nan_demo=None):
    rng = np.random.default_rng(0)
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        data.attrs["env_args"] = json.dumps({"env_name": "Lift", "type": 1, "env_kwargs": {}})
        for i, t in enumerate(lengths):
            demo = data.create_group(f"demo_{i}")
            demo.create_dataset("obs/robot0_eef_pos", data=rng.normal(size=(t, 3)))
            demo.create_dataset("obs/robot0_gripper_qpos", data=rng.normal(size=(t, 2)))
            demo.create_dataset(
                "obs/agentview_image", data=rng.integers(0, 255, (t, 8, 8, 3), dtype=np.uint8)
            )
            actions = rng.uniform(-1, 1, (t, 7))
            if i == nan_demo:
                actions[1, 0] = np.nan
            demo.create_dataset("actions", data=actions)
            demo.create_dataset("rewards", data=np.zeros(t))
            demo.create_dataset("dones", data=np.r_[np.zeros(t - 1), 1])
        f.create_dataset("mask/train", data=np.array([b"demo_0", b"demo_2", b"demo_10"][: len(lengths)]))
        f.create_dataset("mask/valid", data=np.array([b"demo_1"]))
    return path


@pytest.fixture
def robomimic_file(tmp_path):
    return write_robomimic(tmp_path / "lift.hdf5", [5, 6, 7] + [4] * 8)


def test_reads_demos_in_numeric_order_with_concatenated_state(robomimic_file):
    episodes = list(
        read_robomimic(
            robomimic_file, ["robot0_eef_pos", "robot0_gripper_qpos"], {"agentview_image": "image_primary"}
        )
    )
    assert [e.meta.episode_id for e in episodes[:3]] == ["lift/demo_0", "lift/demo_1", "lift/demo_2"]
    assert episodes[10].meta.episode_id == "lift/demo_10"
    first = episodes[0]
    assert first.observations["state"].shape == (5, 5)
    assert first.observations["image_primary"].shape == (5, 8, 8, 3)
    assert first.actions.shape == (5, 7) and first.meta.task == "Lift" and first.meta.success is True
    with h5py.File(robomimic_file) as f:
        np.testing.assert_allclose(first.observations["state"][:, :3], f["data/demo_0/obs/robot0_eef_pos"][:])
    store = TrajectoryStore.from_episodes(episodes)
    assert store.n_steps == 5 + 6 + 7 + 4 * 8


def test_filter_keys_select_demos(robomimic_file):
    assert demo_names(robomimic_file, "train") == ["demo_0", "demo_2", "demo_10"]
    assert [
        e.meta.episode_id for e in read_robomimic(robomimic_file, ["robot0_eef_pos"], filter_key="valid")
    ] == ["lift/demo_1"]
    with pytest.raises(DataError, match="valid filter keys: \\['train', 'valid'\\]"):
        demo_names(robomimic_file, "test")


def test_errors_are_one_clear_line(tmp_path, robomimic_file):
    with pytest.raises(DataError, match="does not exist"):
        demo_names(tmp_path / "missing.hdf5")
    (tmp_path / "junk.hdf5").write_text("not hdf5")
    with pytest.raises(DataError, match="not a readable hdf5"):
        demo_names(tmp_path / "junk.hdf5")
    with pytest.raises(DataError, match="available obs keys"):
        list(read_robomimic(robomimic_file, ["robot0_joint_pos"]))
    bad = write_robomimic(tmp_path / "nan.hdf5", [4, 4], nan_demo=1)
    with pytest.raises(DataError, match="NaN or inf") as info:
        list(read_robomimic(bad, ["robot0_eef_pos"]))
    assert "\n" not in str(info.value)

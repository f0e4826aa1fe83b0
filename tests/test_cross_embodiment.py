"""benchmarks/cross_embodiment.py's datasets at a tiny size: written in three layouts and conventions, they
read back through the mixture prior in the target's 4-d layout with the actions the benchmark claims:
sawyer_4d as generated, eef_7d as the generated actions in metres and a [0, 1] closing amount (which the
inverse map and the per-dataset normalization turn back into MetaWorld's), rotated_base turned 90 deg."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tensorflow_datasets")

from datamil.data.normalization import NormStats  # noqa: E402
from datamil.data.sources import RLDSSource  # noqa: E402
from datamil.scripts import load_script

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.sim  # generates MuJoCo episodes


@pytest.fixture(scope="module")
def bench():
    return load_script(ROOT / "benchmarks" / "cross_embodiment.py")


@pytest.fixture(scope="module")
def read_back(bench, tmp_path_factory):
    root = tmp_path_factory.mktemp("xemb")
    settings = bench.Settings(
        tasks=("metaworld/push", "metaworld/reach"), episodes_per_task=1, max_steps=12, n_target_demos=2,
        n_target_val=1, target_max_steps=150,
    )  # fmt: skip
    built = bench.build_datasets(root / "rlds", settings, progress=False)
    source = RLDSSource(
        prior=bench.prior_config(built), target=str(built.target), n_target_val=1, normalization="none",
        cache_dir=str(root / "cache"),
    )  # fmt: skip
    return built, source.load(settings.target), settings


def prior_actions(data, label: str, index: int) -> np.ndarray:
    (i,) = data.prior.index_of([f"{label}/{index}"])
    return data.prior.episode(int(i)).actions


def test_every_dataset_reads_into_the_target_layout(read_back, bench):
    built, data, settings = read_back
    n = len(settings.tasks) * settings.episodes_per_task
    assert data.prior.n_episodes == 3 * n and data.prior.action_dim == 4
    assert set(data.prior.episodes.dataset) == {"sawyer_4d", "eef_7d", "rotated_base"}
    assert data.robots == {"sawyer_4d": "sawyer", "eef_7d": "sawyer", "rotated_base": "sawyer_rot90"}
    assert "obs/state" in data.prior.arrays  # 39-d everywhere, so the state is kept
    assert data.target_train.action_dim == 4
    demos = np.concatenate([e.actions for e in built.episodes["target"]])
    read = np.concatenate([data.target_train.episode(i).actions for i in range(data.target_train.n_episodes)])
    read = np.concatenate(
        [read, *(data.target_val.episode(i).actions for i in range(data.target_val.n_episodes))]
    )
    assert sorted(map(tuple, read.round(5))) == sorted(map(tuple, demos.round(5)))


def test_actions_are_the_claimed_conventions(read_back):
    built, data, settings = read_back
    for i, episode in enumerate(built.episodes["sawyer_4d"]):
        np.testing.assert_allclose(prior_actions(data, "sawyer_4d", i), episode.actions, atol=1e-6)
    for i, episode in enumerate(built.episodes["eef_7d"]):
        read = prior_actions(data, "eef_7d", i)
        assert np.abs(read[:, :3]).max() <= 0.01 + 1e-6  # metres: MetaWorld's [-1, 1] x 1 cm
        inverse = np.concatenate([read[:, :3] / 0.01, 2 * read[:, 3:] - 1], axis=1)
        np.testing.assert_allclose(inverse, episode.actions, atol=1e-4)
        # the per-dataset normalization undoes units and gripper encoding: both are positive affine maps
        own, raw = NormStats.of(read), NormStats.of(episode.actions)
        np.testing.assert_allclose(
            own.normalize(read, "bounds"), raw.normalize(episode.actions, "bounds"), atol=1e-3
        )
    for i, episode in enumerate(built.episodes["rotated_base"]):
        read, world = prior_actions(data, "rotated_base", i), episode.actions
        np.testing.assert_allclose(read[:, 0], world[:, 1], atol=1e-6)
        np.testing.assert_allclose(read[:, 1], -world[:, 0], atol=1e-6)
        np.testing.assert_allclose(read[:, 2:], world[:, 2:], atol=1e-6)
        assert not np.allclose(read[:, :2], world[:, :2])  # wrong for the target's embodiment


def test_composition_counts_target_task_episodes_per_dataset(bench, read_back):
    _, _, settings = read_back
    counts = bench.dataset_composition(
        ["sawyer_4d/0", "eef_7d/1", "rotated_base/0", "rotated_base/1"], settings
    )
    assert counts["sel_sawyer_4d"] == 1 and counts["sel_sawyer_4d_target_task"] == 1  # push is task 0
    assert counts["sel_eef_7d"] == 1 and counts["sel_eef_7d_target_task"] == 0
    assert counts["sel_rotated_base"] == 2 and counts["sel_rotated_base_target_task"] == 1
    assert counts["sel_robot_sawyer"] == 2 and counts["sel_robot_sawyer_rot90"] == 2

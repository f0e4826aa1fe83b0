"""Mixture priors on tiny real TFDS datasets: two OXE registry layouts as one prior, a write_rlds target
read as is, one selection over both, the composition by dataset and robot, and weighted co-training."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tensorflow_datasets")

import rlds_fixtures as fx  # noqa: E402
from entry_points import run_app_ok, user_env  # noqa: E402

from datamil.data.rlds import write_rlds  # noqa: E402
from datamil.data.schema import Episode, EpisodeMeta  # noqa: E402
from datamil.data.sources import RLDSSource  # noqa: E402
from datamil.errors import DataError  # noqa: E402
from datamil.training.cotraining import build_mixture  # noqa: E402

TARGET_HW = (24, 24)  # the target's camera: the mixture's cameras (16x16 in the fixtures) are resized to it


def target_episodes(n: int = 4, seed: int = 3) -> list[Episode]:
    """Target demos in our own layout: one 24x24 camera, a 7-d state, 7-d actions in metres."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        t = 5 + i
        obs = {
            "image_primary": rng.integers(0, 256, (t, *TARGET_HW, 3), dtype=np.uint8),
            "state": rng.normal(size=(t, 7)).astype(np.float32),
        }
        actions = (rng.normal(size=(t, 7)) * 0.01).astype(np.float32)
        out.append(Episode(obs, actions, EpisodeMeta(f"mine/{i}", "mine", "t"), language_instruction="go"))
    return out


@pytest.fixture(scope="module")
def datasets(tmp_path_factory) -> dict[str, Path]:
    """bridge (7-d state) and fractal (8-d state) in their registry layouts, and a write_rlds target."""
    root = tmp_path_factory.mktemp("mix")
    bridge, _ = fx.write_oxe(root / "rlds", "bridge", n=3, seed=0)
    fractal, _ = fx.write_oxe(root / "rlds", "fractal20220817_data", n=4, seed=1)
    target = write_rlds(target_episodes(), root / "rlds", "my_target")
    return {"bridge": bridge, "fractal": fractal, "target": target, "root": root}


def source(datasets, tmp_path, **kwargs) -> RLDSSource:
    prior = [
        {"path": str(datasets["bridge"]), "robot": "widowx", "max_episodes": 2},
        {"path": str(datasets["fractal"]), "label": "rt1", "robot": "google_robot", "weight": 3.0},
    ]
    settings = dict(prior=prior, target=str(datasets["target"]), n_target_val=1, cache_dir=str(tmp_path))
    return RLDSSource(**{**settings, **kwargs})


def test_mixture_prior_has_unique_ids_one_layout_and_a_note_on_states(datasets, tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        data = source(datasets, tmp_path).load("t")
    prior = data.prior
    assert prior.episodes.episode_id == ["bridge/0", "bridge/1", "rt1/0", "rt1/1", "rt1/2", "rt1/3"]
    assert prior.episodes.dataset == ["bridge"] * 2 + ["rt1"] * 4
    assert data.robots == {"bridge": "widowx", "rt1": "google_robot"}
    assert data.prior_weights == {"bridge": 1.0, "rt1": 3.0}
    assert prior.obs_keys == ["image_primary"] and prior.arrays["obs/image_primary"].shape[1:] == (
        *TARGET_HW,
        3,
    )
    # bridge 7-d, fractal 8-d, target 7-d: states dropped everywhere, said on one line
    notes = [r.getMessage() for r in caplog.records if "state sizes differ" in r.getMessage()]
    assert len(notes) == 1 and "\n" not in notes[0] and "policy=bc_image_only" in notes[0]
    assert "obs/state" not in data.target_train.arrays and "obs/state" not in data.target_val.arrays
    # q01_q99 per dataset: each prior dataset and the target span [-1, 1]
    labels = np.asarray(prior.episodes.dataset)
    for name in ("bridge", "rt1"):
        actions = prior.arrays["action"][prior.step_indices(np.flatnonzero(labels == name))]
        varies = actions.max(0) > actions.min(0)
        assert np.all(actions.min(0)[varies] == -1) and np.all(actions.max(0)[varies] == 1)
    assert data.normalization is not None and data.normalization.mode == "q01_q99"
    assert np.abs(data.normalization.action.q99).max() < 0.1  # the target's own units (metres)


def test_target_reads_as_is_whatever_the_prior_standardization(datasets, tmp_path):
    """data.standardization names the prior's layout only: a write_rlds target is not read with it."""
    single = RLDSSource(
        prior=str(datasets["bridge"]),
        target=str(datasets["target"]),
        standardization="bridge",
        n_target_val=1,
        cache_dir=str(tmp_path),
        normalization="none",
    ).load("t")
    raw = np.concatenate([e.actions for e in target_episodes()])
    both = np.concatenate([single.target_train.arrays["action"], single.target_val.arrays["action"]])
    np.testing.assert_array_equal(np.sort(both, axis=0), np.sort(raw, axis=0))
    assert single.prior.episodes.episode_id[0] == "bridge/train/0"  # a single prior keeps its ids
    assert single.target_train.arrays["obs/state"].shape[1] == 7


def test_docs_mixture_example_parses():
    """The mixture block of docs/oxe.md is a valid data.prior list."""
    import re

    import yaml

    from datamil.data.mixture import prior_entries

    docs = (Path(__file__).resolve().parents[1] / "docs" / "oxe.md").read_text()
    (block,) = [b for b in re.findall(r"```yaml\n(.*?)```", docs, flags=re.S) if "prior:\n  - " in b]
    entries = prior_entries(yaml.safe_load(block)["prior"])
    assert [e.robot for e in entries] == ["widowx", "google_robot", "franka"]
    assert entries[1].label == "rt1" and entries[1].weight == 0.5 and entries[0].max_episodes == 2000
    assert entries[2].mapping == {"state_keys": ["observation/robot_obs[0:7]"]}


def test_bad_mixture_entries_are_one_line(datasets, tmp_path):
    same = [{"path": str(datasets["bridge"])}, {"path": str(datasets["bridge"]), "max_episodes": 1}]
    with pytest.raises(DataError, match="^two prior datasets are labelled 'bridge'; give one of them"):
        source(datasets, tmp_path, prior=same).load("t")
    with pytest.raises(DataError, match=r"^data.prior\[0\] has unknown field\(s\) \['weigth'\]"):
        source(datasets, tmp_path, prior=[{"path": "x", "weigth": 2}]).load("t")
    with pytest.raises(DataError, match=r"^with a list data.prior, set \['standardization'\] per entry"):
        source(datasets, tmp_path, standardization="bridge").load("t")


def test_weights_scale_the_sampling_of_each_dataset_not_the_scores(datasets, tmp_path):
    data = source(datasets, tmp_path).load("t")
    ids = data.prior.episodes.episode_id
    mixture = build_mixture(data.target_train, data.prior, ids, 1.0, 1.0, 64, 0, False, data.prior_weights)
    pools, ratios = mixture.sampler.pools, mixture.sampler.ratios
    assert len(pools) == 3  # target, bridge, rt1
    lengths = data.prior.episode_lengths
    n_bridge, n_rt1 = lengths[:2].sum(), lengths[2:].sum()
    expected = np.asarray([1.0 * n_bridge, 3.0 * n_rt1]) / (n_bridge + 3.0 * n_rt1) / 2
    np.testing.assert_allclose(ratios, [0.5, *expected])
    even = build_mixture(data.target_train, data.prior, ids, 1.0, 1.0, 64, 0, False, {"bridge": 1, "rt1": 1})
    assert len(even.sampler.pools) == 2  # equal weights: uniform over the selected steps, one pool


def test_select_over_a_mixture_prior_end_to_end(datasets, tmp_path):
    """`python -m datamil.select` with a two-dataset prior: one selection over both, ids naming their
    dataset, and the composition by dataset and by robot in report.md and sources.csv."""
    prior = (
        f"data.prior=[{{path: {datasets['bridge']}, robot: widowx}},"
        f"{{path: {datasets['fractal']}, label: rt1, robot: google_robot, weight: 2}}]"
    )
    tiny = ["policy.channels=[8,8]", "policy.strides=[2,1]", "policy.keypoints=4", "policy.feature_dim=8"]
    overrides = [
        "+task=t", "data=rlds", prior,
        f"data.target={datasets['target']}", "data.n_target_val=1", "policy=bc_image_only",
        "estimator=image", "policy.image_size=[16,16]", "policy.hidden=[16,16]", *tiny,
        "estimator.fit.steps=3", "estimator.fit.batch_size=8", "estimator.proxy.batch_size=8",
        "estimator.proxy.optim.total_steps=3", "selection.budget=0.5",
    ]  # fmt: skip
    done = run_app_ok(
        "datamil.select", *overrides, env=user_env(tmp_path / "cache"), run_dir=tmp_path / "run"
    )
    output = done.stdout + done.stderr
    assert "state sizes differ" in output and "Traceback" not in output
    selection = json.loads((tmp_path / "run" / "selection.json").read_text())
    everything = {f"bridge/{i}" for i in range(3)} | {f"rt1/{i}" for i in range(4)}
    assert len(selection["selected"]) == 4 and set(selection["selected"]) <= everything
    rows = list(csv.DictReader((tmp_path / "run" / "sources.csv").open()))
    by = {(r["by"], r["name"]): r for r in rows}
    assert {k for k in by} == {
        ("dataset", "bridge"),
        ("dataset", "rt1"),
        ("robot", "widowx"),
        ("robot", "google_robot"),
    }
    assert (
        by[("dataset", "bridge")]["prior_episodes"] == "3"
        and by[("robot", "google_robot")]["prior_episodes"] == "4"
    )
    chosen = sum(int(r["selected_episodes"]) for r in rows if r["by"] == "dataset")
    assert chosen == 4
    report = (tmp_path / "run" / "report.md").read_text()
    assert "## Composition by dataset" in report and "## Composition by robot" in report

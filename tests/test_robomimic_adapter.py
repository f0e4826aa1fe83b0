"""robomimic adapter: export to robomimic's hdf5 layout (round trip through our reader), and training
where robomimic's stack imports."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from datamil.data.robomimic_hdf5 import demo_names, read_robomimic
from datamil.data.schema import Episode, EpisodeMeta
from datamil.data.store import TrajectoryStore
from datamil.errors import DatamilError
from datamil.policies.robomimic_adapter import (
    RobomimicUnavailable,
    import_robomimic,
    mixture_to_robomimic,
    store_to_robomimic,
    train_robomimic,
)
from datamil.training.cotraining import build_mixture


def make_store(dataset: str, lengths: list[int], seed: int, task: str = "metaworld/reach") -> TrajectoryStore:
    """Episodes with a state, a small camera image, rewards, and alternating success."""
    rng = np.random.default_rng(seed)
    episodes = []
    for i, t in enumerate(lengths):
        obs = {
            "state": rng.normal(size=(t, 5)).astype(np.float32),
            "image_primary": rng.integers(0, 255, (t, 6, 8, 3), dtype=np.uint8),
        }
        meta = EpisodeMeta(f"{dataset}/ep{i}", dataset, task, success=i % 2 == 0)
        rewards = rng.uniform(size=t).astype(np.float32)
        episodes.append(Episode(obs, rng.uniform(-1, 1, (t, 4)).astype(np.float32), meta, rewards))
    return TrajectoryStore.from_episodes(episodes)


def test_store_round_trips_through_our_robomimic_reader(tmp_path) -> None:
    store = make_store("prior", [3, 5, 4, 2] + [3] * 8, seed=0)
    path = store_to_robomimic(store, tmp_path / "out.hdf5", masks={"odd": [1, 3, 11]})
    episodes = list(read_robomimic(path, ["state"], {"image_primary": "image_primary"}, dataset_name="rt"))
    assert [e.meta.episode_id for e in episodes][:3] == ["rt/demo_0", "rt/demo_1", "rt/demo_2"]
    assert len(episodes) == store.n_episodes == 12  # demo_10, demo_11 sorted numerically, after demo_9
    for i, episode in enumerate(episodes):
        original = store.episode(i)
        for key in ("state", "image_primary"):
            np.testing.assert_array_equal(episode.observations[key], original.observations[key])
        np.testing.assert_array_equal(episode.actions, original.actions)
        np.testing.assert_array_equal(episode.rewards, original.rewards)
        assert episode.meta.success == original.meta.success and episode.meta.task == "metaworld/reach"
    assert demo_names(path, "odd") == ["demo_1", "demo_3", "demo_11"]
    assert demo_names(path, "train") == [f"demo_{i}" for i in range(12)]
    with h5py.File(path) as f:
        assert f["data"].attrs["total"] == store.n_steps
        assert f["data/demo_11"].attrs["episode_id"] == "prior/ep11"
        assert f["data/demo_1"].attrs["num_samples"] == 5
    assert [p.name for p in tmp_path.iterdir()] == ["out.hdf5"]  # no temporary file left


def test_mixture_exports_one_file_per_pool_with_its_weights(tmp_path) -> None:
    target = make_store("target", [4, 4], seed=1)
    prior = make_store("prior", [3, 5, 2], seed=2)
    mixture = build_mixture(target, prior, ["prior/ep2", "prior/ep0"], 1.0, 3.0, batch_size=8, seed=0)
    data = mixture_to_robomimic(mixture, tmp_path)
    assert [p.name for p in data.paths] == ["target.hdf5", "prior.hdf5"]
    assert data.weights == pytest.approx((0.25, 0.75))
    assert len(list(read_robomimic(data.paths[1], ["state"]))) == 2
    with h5py.File(data.paths[1]) as f:
        assert [f[f"data/demo_{i}"].attrs["episode_id"] for i in range(2)] == ["prior/ep2", "prior/ep0"]
    target_only = build_mixture(target, prior, [], 1.0, 1.0, batch_size=8, seed=0)
    assert [p.name for p in mixture_to_robomimic(target_only, tmp_path / "t").paths] == ["target.hdf5"]


def test_export_errors_are_one_line(tmp_path) -> None:
    store = make_store("prior", [3, 3], seed=0)
    with pytest.raises(DatamilError, match="not exported") as info:
        store_to_robomimic(store, tmp_path / "x.hdf5", episode_indices=[0], masks={"valid": [1]})
    assert "\n" not in str(info.value) and not any(tmp_path.iterdir())
    with pytest.raises(DatamilError, match="no episodes"):
        store_to_robomimic(store, tmp_path / "x.hdf5", episode_indices=[])


def robomimic_or_skip() -> None:
    try:
        import_robomimic()
    except RobomimicUnavailable as error:
        pytest.skip(str(error))


@pytest.mark.slow
@pytest.mark.parametrize("algo", ["bc", "bc_rnn"])
def test_robomimic_trains_on_a_mixture(tmp_path, algo: str) -> None:
    robomimic_or_skip()
    target = make_store("target", [20, 20], seed=1)
    prior = make_store("prior", [20, 20], seed=2)
    mixture = build_mixture(target, prior, ["prior/ep0"], 1.0, 1.0, batch_size=8, seed=0)
    out = train_robomimic(mixture, tmp_path, algo=algo, epochs=1)
    assert out.is_dir() and any(out.rglob("*.pth"))


def test_unavailable_robomimic_is_one_line() -> None:
    try:
        import_robomimic()
    except RobomimicUnavailable as error:
        message = str(error)
        assert "\n" not in message and message.startswith("robomimic's stack does not import here: ")
    else:
        pytest.skip("robomimic imports here; the one-line failure cannot be shown")

"""Trajectory store: flat arrays + offsets, index arithmetic, disk round trip, validation."""

import numpy as np
import pytest

from datamil.data.schema import Episode, EpisodeMeta
from datamil.data.store import StoreWriter, TrajectoryStore
from datamil.errors import DataError


def make_episode(
    i: int, length: int, dataset: str = "ds", action_dim: int = 4, image: bool = True
) -> Episode:
    rng = np.random.default_rng(i)
    obs = {"state": rng.normal(size=(length, 5)).astype(np.float32) + (10 if dataset == "far" else 0)}
    if image:
        obs["image_primary"] = rng.integers(0, 255, (length, 8, 8, 3), dtype=np.uint8)
    actions = rng.uniform(-1, 1, (length, action_dim)).astype(np.float32)
    return Episode(
        obs, actions, EpisodeMeta(f"{dataset}/{i}", dataset, "task", i % 2 == 0), language_instruction="go"
    )


@pytest.fixture
def episodes():
    return [make_episode(i, n, "ds" if i < 3 else "far") for i, n in enumerate([3, 5, 7, 4])]


def test_flat_arrays_and_offsets_are_index_arithmetic(episodes):
    store = TrajectoryStore.from_episodes(episodes)
    assert store.n_steps == 19 and store.n_episodes == 4
    np.testing.assert_array_equal(store.offsets, [0, 3, 8, 15, 19])
    steps = store.step_indices([2, 0])
    np.testing.assert_array_equal(steps, [8, 9, 10, 11, 12, 13, 14, 0, 1, 2])
    np.testing.assert_array_equal(store.episode_of_step[steps], [2] * 7 + [0] * 3)
    batch = store.batch(steps)
    np.testing.assert_array_equal(batch["action"][:7], episodes[2].actions)
    np.testing.assert_array_equal(batch["obs/image_primary"][7:], episodes[0].observations["image_primary"])
    again = store.episode(1)
    np.testing.assert_array_equal(again.observations["state"], episodes[1].observations["state"])
    assert again.meta == episodes[1].meta and again.is_first[0] and again.is_last[-1]


def test_stats_are_per_dataset(episodes):
    store = TrajectoryStore.from_episodes(episodes)
    assert set(store.stats) == {"ds", "far"}
    assert set(store.stats["ds"]) == {"obs/state", "action"}  # no statistics for images
    near, far = store.stats["ds"]["obs/state"], store.stats["far"]["obs/state"]
    assert np.all(far.mean - near.mean > 5)
    ds_states = np.concatenate([e.observations["state"] for e in episodes[:3]])
    np.testing.assert_allclose(near.mean, ds_states.mean(0), rtol=1e-5)
    np.testing.assert_allclose(near.q99, np.quantile(ds_states, 0.99, axis=0), rtol=1e-5)


@pytest.mark.parametrize("mmap", [True, False])
def test_save_load_round_trip(tmp_path, episodes, mmap):
    store = TrajectoryStore.from_episodes(episodes)
    store.save(tmp_path / "store")
    loaded = TrajectoryStore.load(tmp_path / "store", mmap=mmap)
    assert isinstance(loaded.arrays["obs/state"], np.memmap) == mmap
    for name, value in store.arrays.items():
        np.testing.assert_array_equal(loaded.arrays[name], value)
    assert loaded.episodes == store.episodes
    np.testing.assert_allclose(loaded.stats["far"]["action"].q01, store.stats["far"]["action"].q01)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp leftovers


def test_streaming_writer_equals_in_memory_build(tmp_path, episodes):
    with StoreWriter(tmp_path / "streamed") as writer:
        for episode in episodes:
            writer.add(episode)
    streamed = TrajectoryStore.load(tmp_path / "streamed")
    built = TrajectoryStore.from_episodes(episodes)
    for name, value in built.arrays.items():
        np.testing.assert_array_equal(streamed.arrays[name], value)
    np.testing.assert_allclose(streamed.stats["ds"]["obs/state"].std, built.stats["ds"]["obs/state"].std)


def test_failed_stream_leaves_nothing_on_disk(tmp_path, episodes):
    bad = make_episode(9, 4, action_dim=3)
    with pytest.raises(DataError, match="action dimension 3 does not match"):
        with StoreWriter(tmp_path / "store") as writer:
            writer.add(episodes[0])
            writer.add(bad)
    assert list(tmp_path.iterdir()) == []


def test_subset_keeps_order_and_parent_stats(episodes):
    store = TrajectoryStore.from_episodes(episodes)
    sub = store.subset(store.index_of(["far/3", "ds/1"]))
    assert sub.episodes.episode_id == ["far/3", "ds/1"]
    np.testing.assert_array_equal(sub.offsets, [0, 4, 9])
    assert sub.stats is store.stats
    with pytest.raises(DataError, match="not in this store"):
        store.index_of(["nope"])
    with pytest.raises(DataError, match="empty episode subset"):
        store.subset([])


@pytest.mark.parametrize(
    "corrupt, message",
    [
        (lambda e: e.actions.__setitem__((1, 2), np.nan), "action at step 1 is NaN"),
        (
            lambda e: e.observations.pop("image_primary"),
            "standardize all datasets to the same observation keys",
        ),
        (lambda e: e.observations.__setitem__("state", e.observations["state"][:2]), "has 2 steps"),
    ],
)
def test_malformed_episodes_fail_with_one_line(episodes, corrupt, message):
    corrupt(episodes[1])
    with pytest.raises(DataError, match=message) as info:
        TrajectoryStore.from_episodes(episodes)
    assert "\n" not in str(info.value)


def test_duplicate_ids_and_empty_input_are_rejected(episodes):
    with pytest.raises(DataError, match="duplicate episode ids"):
        TrajectoryStore.from_episodes([episodes[0], episodes[0]])
    with pytest.raises(DataError, match="no episodes"):
        TrajectoryStore.from_episodes([])


def test_load_rejects_a_directory_that_is_not_a_store(tmp_path):
    with pytest.raises(DataError, match="not a datamil trajectory store"):
        TrajectoryStore.load(tmp_path)


def test_concat_keeps_order_and_recomputes_stats(episodes):
    first, second = TrajectoryStore.from_episodes(episodes[:2]), TrajectoryStore.from_episodes(episodes[2:])
    both = TrajectoryStore.concat([first, second])
    whole = TrajectoryStore.from_episodes(episodes)
    np.testing.assert_array_equal(both.offsets, whole.offsets)
    assert both.episodes == whole.episodes
    for name, value in whole.arrays.items():
        np.testing.assert_array_equal(both.arrays[name], value)
    np.testing.assert_allclose(both.stats["ds"]["obs/state"].mean, whole.stats["ds"]["obs/state"].mean)
    with pytest.raises(DataError, match="duplicate episode ids"):
        TrajectoryStore.concat([first, first])


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_outputs_get_the_users_default_permissions(tmp_path, episodes, umask):
    """Atomic writes publish their temp paths: files 0666 & ~umask and folders 0777 & ~umask, not 0600 / 0700."""
    import os
    import stat

    from datamil.io import atomic_write_text

    previous = os.umask(umask)
    try:
        written = atomic_write_text(tmp_path / "report.md", "hello\n")
        store = TrajectoryStore.from_episodes(episodes).save(tmp_path / "store")
    finally:
        os.umask(previous)
    assert stat.S_IMODE(written.stat().st_mode) == 0o666 & ~umask
    assert stat.S_IMODE(store.stat().st_mode) == 0o777 & ~umask
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o666 & ~umask for p in store.iterdir() if p.is_file())

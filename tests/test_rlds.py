"""RLDS write/read round trip through real TFDS directories, ingest into a store, and every error path."""

from __future__ import annotations

import tempfile

import numpy as np
import pytest

pytest.importorskip("tensorflow_datasets")

import rlds_fixtures as fx  # noqa: E402

from datamil.data.rlds import ingest_rlds, read_rlds, write_rlds  # noqa: E402
from datamil.data.schema import STEP_FLAGS, Episode, EpisodeMeta  # noqa: E402
from datamil.errors import DataError, DatamilError, UnknownNameError  # noqa: E402


@pytest.fixture(scope="module")
def episodes():
    return fx.make_episodes(n=3, steps=6)


@pytest.fixture(scope="module")
def written(tmp_path_factory, episodes):
    data_dir = tmp_path_factory.mktemp("rlds")
    return data_dir, write_rlds(episodes, data_dir, "datamil_toy")


def _read(source, **kwargs):
    return list(read_rlds(source, progress=False, **kwargs))


def _assert_same(read: Episode, original: Episode) -> None:
    assert read.meta == original.meta
    assert read.language_instruction == original.language_instruction
    assert set(read.observations) == set(original.observations)
    for key, value in original.observations.items():
        assert read.observations[key].dtype == value.dtype
        assert np.array_equal(read.observations[key], value), key
    assert np.array_equal(read.actions, original.actions)
    assert np.array_equal(read.rewards, original.rewards)
    for flag in STEP_FLAGS:
        assert np.array_equal(getattr(read, flag), getattr(original, flag)), flag


# ---------------------------------------------------------------- round trip
def test_write_layout_is_a_tfds_version_dir(written):
    data_dir, path = written
    assert path == data_dir / "datamil_toy" / "1.0.0"
    assert (path / "dataset_info.json").is_file() and (path / "features.json").is_file()
    assert sorted(p.name for p in data_dir.iterdir()) == ["datamil_toy"]  # no temp or downloads folders
    assert sorted(p.name for p in (data_dir / "datamil_toy").iterdir()) == ["1.0.0"]


def test_round_trip_preserves_everything(written, episodes):
    _, path = written
    read = _read(path)
    assert len(read) == len(episodes)
    for r, e in zip(read, episodes, strict=True):
        _assert_same(r, e)
    assert [r.meta.success for r in read] == [True, False, None]


def test_source_can_be_root_dir_or_name(written, episodes):
    data_dir, _ = written
    by_root = _read(data_dir / "datamil_toy")
    by_name = _read("datamil_toy", data_dir=str(data_dir))
    ids = [e.meta.episode_id for e in episodes]
    assert [e.meta.episode_id for e in by_root] == ids == [e.meta.episode_id for e in by_name]


def test_ids_are_stable_and_max_episodes_takes_a_prefix(written):
    _, path = written
    first = [e.meta.episode_id for e in _read(path)]
    assert first == [e.meta.episode_id for e in _read(path)]
    assert [e.meta.episode_id for e in _read(path, max_episodes=2)] == first[:2]


def test_images_off_keeps_state_only(written, episodes):
    _, path = written
    read = _read(path, images=False)
    assert all(set(e.observations) == {"state"} for e in read)
    assert np.array_equal(read[1].observations["state"], episodes[1].observations["state"])


def test_jpeg_images_are_close(tmp_path):
    original = fx.make_episodes(n=1, steps=4)
    original[0].observations["image_primary"] = np.full((4, *fx.HW, 3), 120, np.uint8)
    (read,) = _read(write_rlds(original, tmp_path, "datamil_jpeg", image_encoding="jpeg"))
    assert np.abs(read.observations["image_primary"].astype(int) - 120).max() <= 3


def test_writing_leaves_no_temp_directories(tmp_path, episodes, monkeypatch):
    """TFDS alone leaves an empty tmp*tfds directory in the temp dir per dataset written."""
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    write_rlds(episodes, tmp_path / "out", "datamil_no_leak")
    assert list(scratch.iterdir()) == []


def test_native_metaworld_entry(tmp_path):
    original = fx.make_episodes(n=2, steps=5, state_dim=39, action_dim=4, image=False, dataset="metaworld")
    read = _read(write_rlds(original, tmp_path, "datamil_metaworld"))
    for r, e in zip(read, original, strict=True):
        _assert_same(r, e)


def test_ingest_into_store(written, episodes, tmp_path):
    _, path = written
    store = ingest_rlds(path, tmp_path / "store", progress=False)
    assert store.n_episodes == 3 and store.n_steps == sum(len(e) for e in episodes)
    assert store.episodes.episode_id == [e.meta.episode_id for e in episodes]
    assert store.episodes.language == [e.language_instruction for e in episodes]
    for i, original in enumerate(episodes):
        _assert_same(store.episode(i), original)
    batch = store.batch(store.sample_steps(np.random.default_rng(0), 8))
    assert batch["obs/image_primary"].shape == (8, *fx.HW, 3) and batch["action"].shape == (8, 4)


# ---------------------------------------------------------------- errors on read
def test_not_rlds_directory(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match=r"not an RLDS/TFDS dataset directory.*dataset_info.json"):
        read_rlds(tmp_path)
    with pytest.raises(DataError, match="does not exist"):
        read_rlds(tmp_path / "missing" / "dir")


def test_unknown_dataset_name(written):
    data_dir, _ = written
    with pytest.raises(UnknownNameError, match=r"unknown RLDS dataset 'no_such_dataset'.*datamil_toy"):
        read_rlds("no_such_dataset", data_dir=str(data_dir))


def test_unknown_standardization_and_split(written):
    _, path = written
    with pytest.raises(UnknownNameError, match=r"unknown OXE dataset 'nope'.*bridge.*taco_play"):
        read_rlds(path, standardization="nope")
    with pytest.raises(DataError, match=r"no split 'validation'.*train"):
        read_rlds(path, split="validation")


def test_missing_keys(written):
    _, path = written
    with pytest.raises(DataError, match=r"datamil_toy.*'action/rel_actions_world' is missing"):
        _read(path, standardization="taco_play")


def test_wrong_action_dim_for_entry(tmp_path):
    path = write_rlds(fx.make_episodes(n=1, action_dim=3, image=False), tmp_path, "datamil_metaworld")
    with pytest.raises(DataError, match=r"toy/ep0.*'action' has per-step shape \(3,\).*expects \(4,\)"):
        _read(path)


def test_nan_action_on_read(tmp_path):
    tfds = fx.tfds_module()
    f = tfds.features
    steps = f.Dataset(
        {
            "observation": f.FeaturesDict({"state": f.Tensor(shape=(2,), dtype=np.float32)}),
            "action": f.Tensor(shape=(2,), dtype=np.float32),
            "language_instruction": f.Text(),
        }
    )
    meta = f.FeaturesDict(
        {"episode_id": f.Text(), "dataset": f.Text(), "task": f.Text(), "success": f.Scalar(np.int32)}
    )
    action = np.zeros((3, 2), np.float32)
    action[2, 0] = np.inf
    example = {
        "steps": {
            "observation": {"state": np.zeros((3, 2), np.float32)},
            "action": action,
            "language_instruction": ["x"] * 3,
        },
        "episode_metadata": {"episode_id": "raw/0", "dataset": "raw", "task": "", "success": -1},
    }
    path = fx.write_raw(
        tmp_path, "raw_nan", f.FeaturesDict({"steps": steps, "episode_metadata": meta}), [example]
    )
    with pytest.raises(DataError, match=r"'raw/0' of 'raw_nan'.*'action' is NaN or inf at step 2"):
        _read(path)


# ---------------------------------------------------------------- errors on write leave nothing behind
def _bad_second(kind: str) -> list[Episode]:
    good, other = fx.make_episodes(n=2, image=False)
    if kind == "nan":
        other.actions[1, 0] = np.nan
    elif kind == "dim":
        other = Episode(other.observations, other.actions[:, :3], other.meta)
    else:  # missing observation key
        other = Episode({"joints": other.observations["state"]}, other.actions, other.meta)
    return [good, other]


@pytest.mark.parametrize(
    ("kind", "message"),
    [("nan", r"'toy/ep1'.*NaN"), ("dim", r"'toy/ep1'.*action dimension 3"), ("keys", r"'toy/ep1'.*differ")],
)
def test_failed_write_leaves_no_output(tmp_path, kind, message):
    with pytest.raises(DataError, match=message):
        write_rlds(_bad_second(kind), tmp_path, "datamil_bad")
    assert list(tmp_path.iterdir()) == []


def test_failed_overwrite_keeps_previous_dataset(tmp_path):
    path = write_rlds(fx.make_episodes(n=1, image=False), tmp_path, "datamil_keep")
    with pytest.raises(DataError):
        write_rlds(_bad_second("nan"), tmp_path, "datamil_keep")
    assert [e.meta.episode_id for e in _read(path)] == ["toy/ep0"]
    assert sorted(p.name for p in (tmp_path / "datamil_keep").iterdir()) == ["1.0.0"]


def test_write_argument_errors(tmp_path):
    with pytest.raises(DataError, match="no episodes"):
        write_rlds([], tmp_path, "datamil_empty")
    with pytest.raises(DataError, match="snake_case"):
        write_rlds(fx.make_episodes(n=1), tmp_path, "Bad Name")
    with pytest.raises(DataError, match="image_encoding"):
        write_rlds(fx.make_episodes(n=1), tmp_path, "datamil_x", image_encoding="gif")
    bad_image = fx.make_episodes(n=1)
    bad_image[0].observations["image_primary"] = bad_image[0].observations["image_primary"].astype(np.float32)
    with pytest.raises(DataError, match="must be uint8"):
        write_rlds(bad_image, tmp_path, "datamil_x")
    assert list(tmp_path.iterdir()) == []
    assert issubclass(DataError, DatamilError) and issubclass(UnknownNameError, DatamilError)


def test_meta_round_trip_of_unknown_success(tmp_path):
    episode = fx.make_episodes(n=1, image=False)[0]
    episode.meta = EpisodeMeta("x/1", "x", "", None)
    (read,) = _read(write_rlds([episode], tmp_path, "datamil_meta"))
    assert read.meta == EpisodeMeta("x/1", "x", "", None)


def test_corrupt_shard_is_one_clear_line(tmp_path, episodes):
    import shutil

    path = write_rlds(episodes, tmp_path / "src", "datamil_toy")
    broken = tmp_path / "broken" / "datamil_toy" / "1.0.0"
    shutil.copytree(path, broken)
    shard = max(broken.glob("*.tfrecord*"), key=lambda p: p.stat().st_size)
    data = bytearray(shard.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 64] = bytes(64)  # zero a run of bytes: the record's CRC no longer matches
    shard.write_bytes(bytes(data))
    with pytest.raises(DataError, match="unreadable data .*re-write or re-download") as info:
        _read(broken)
    assert "\n" not in str(info.value)


def test_small_episodes_travel_batched_and_an_error_inside_a_batch_names_its_episode(tmp_path):
    """State-only episodes are read many to one tf.data element (split back per episode); an unparsable
    record in the middle of such a batch is still reported as that exact episode, after the episodes
    before it were read."""
    import shutil

    import tensorflow as tf

    from datamil.data.rlds import episodes_per_element

    original = fx.make_episodes(n=9, steps=5, image=False)
    path = write_rlds(original, tmp_path / "src", "datamil_batched")
    read = _read(path)
    assert [e.meta.episode_id for e in read] == [e.meta.episode_id for e in original]
    for got, want in zip(read, original, strict=True):
        np.testing.assert_array_equal(got.actions, want.actions)
        np.testing.assert_array_equal(got.observations["state"], want.observations["state"])
    spec = {"steps": {"action": tf.TensorSpec([None, 4], tf.float32)}, "id": tf.TensorSpec([], tf.string)}
    assert episodes_per_element(tf, spec) == 64
    frames = {**spec, "steps": {"image": tf.TensorSpec([None, 256, 256, 3], tf.uint8)}}
    assert episodes_per_element(tf, frames) == 1
    ragged = {**spec, "steps": {"tokens": tf.TensorSpec([None, None], tf.int32)}}
    assert episodes_per_element(tf, ragged) == 1

    broken = tmp_path / "broken" / "datamil_batched" / "1.0.0"
    shutil.copytree(path, broken)
    records = {s: [r.numpy() for r in tf.data.TFRecordDataset(str(s))] for s in broken.glob("*.tfrecord*")}
    shard, ordered = next((s, r) for s, r in records.items() if len(r) > 5)
    ordered[5] = b"not an example"  # a valid record frame (checksums match) that does not parse
    with tf.io.TFRecordWriter(str(shard)) as writer:
        for record in ordered:
            writer.write(record)
    seen = []
    with pytest.raises(DataError, match=r"unreadable data in episode #5 ") as error:
        for episode in read_rlds(broken, progress=False):
            seen.append(episode.meta.episode_id)
    assert "\n" not in str(error.value)
    assert seen == [e.meta.episode_id for e in original[:5]]

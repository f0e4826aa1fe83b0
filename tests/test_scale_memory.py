"""Memory at scale: streamed statistics, positioned reads, the streamed encoder fit (each the same numbers as
the in-memory path), and benchmarks/scale_memory.py's functions at tiny sizes."""

from __future__ import annotations

import csv
import functools
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from datamil.data.normalization import NormStats
from datamil.data.rlds import ingest_rlds
from datamil.data.store import StoreWriter, TrajectoryStore, read_rows
from datamil.datamodels.features import FitConfig, fit_data, fit_encoder, write_fit_data
from datamil.policies.build import build_policy
from datamil.policies.vision import VisionPolicy
from datamil.training import BatchSource, StreamingBatchSource

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import scale_memory  # noqa: E402

FIELDS = ("mean", "std", "min", "max", "q01", "q99")


@pytest.mark.parametrize("width", [1, 5])
@pytest.mark.parametrize("rows", [900, 5003])
def test_streamed_statistics_are_bit_identical_to_the_in_memory_ones(width, rows):
    rng = np.random.default_rng(width)
    x = (rng.normal(3, 1, (rows, width)) * rng.uniform(0.1, 100, width)).astype(np.float32)
    kwargs = {"max_rows_for_quantiles": 2000, "seed": 3}
    whole = NormStats.of(x, **kwargs)
    streamed = NormStats.streamed(rows, lambda r: x[r], chunk_rows=512, **kwargs)
    for name in FIELDS:
        assert np.array_equal(getattr(whole, name), getattr(streamed, name)), name
    assert streamed.count == rows


@pytest.fixture
def camera_store(tmp_path) -> TrajectoryStore:
    """A memory-mapped store of 12 episodes with a 16x16 camera and a 3-d state, two source datasets."""
    episodes = scale_memory.synthetic_episodes(12, 7, 3, 2, image_size=16)
    with StoreWriter(tmp_path / "store") as writer:
        for i, episode in enumerate(episodes):
            episode.meta = type(episode.meta)(episode.meta.episode_id, f"d{i % 2}", "t", None)
            writer.add(episode)
    return TrajectoryStore.load(tmp_path / "store")


def test_read_rows_equals_indexing_in_any_order_and_ingest_stats_match(camera_store):
    rows = np.array([5, 6, 7, 0, 83, 7, 40, 41])
    for name, array in camera_store.arrays.items():
        assert isinstance(array, np.memmap)
        got = read_rows(array, rows)
        assert not isinstance(got, np.memmap) and np.array_equal(got, array[rows]), name
    with pytest.raises(IndexError):
        read_rows(camera_store.arrays["action"], np.array([camera_store.n_steps]))
    in_memory = TrajectoryStore.load(camera_store_path(camera_store), mmap=False)
    for dataset, per_key in in_memory.compute_stats().items():
        for key, stats in per_key.items():
            saved = camera_store.stats[dataset][key]  # streamed by StoreWriter at write time
            assert all(np.array_equal(getattr(stats, f), getattr(saved, f)) for f in FIELDS), (dataset, key)


def camera_store_path(store: TrajectoryStore) -> Path:
    return Path(store.arrays["action"].filename).parent


def _policy(store: TrajectoryStore, size: int) -> VisionPolicy:
    factory = functools.partial(
        VisionPolicy,
        image_keys=["image_primary"],
        image_size=(size, size),
        channels=(4,),
        strides=(2,),
        keypoints=4,
        feature_dim=8,
        hidden=(16,),
    )
    return build_policy(factory, store)


def test_streamed_fit_data_and_encoder_fit_equal_the_in_memory_ones(camera_store, tmp_path):
    policy = _policy(camera_store, 12)  # the fit resizes 16x16 frames to 12x12, episode by episode
    stores = [camera_store, camera_store.subset(np.arange(3))]
    stores[1].episodes.episode_id[:] = [f"target/{i}" for i in range(3)]
    memory, disk = fit_data(policy, stores), write_fit_data(policy, stores, tmp_path / "fit")
    assert set(memory.arrays) == set(disk.arrays)
    assert disk.arrays["obs/image_primary"].shape[1:] == (12, 12, 3)
    for name in memory.arrays:
        assert np.array_equal(memory.arrays[name], disk.arrays[name]), name
    assert memory.episodes == disk.episodes and np.array_equal(memory.offsets, disk.offsets)
    fit = FitConfig(steps=4, batch_size=8)
    a = fit_encoder(policy, stores, fit)
    b = fit_encoder(policy, stores, fit, workdir=tmp_path / "work")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert list((tmp_path / "work").iterdir()) == []  # the streamed fit data is removed afterwards


def test_streaming_batch_source_gives_the_in_memory_batches(camera_store):
    policy = _policy(camera_store, 16)
    pool, weights = np.arange(10, 60), np.linspace(0, 1, camera_store.n_steps)
    full = BatchSource(policy, camera_store, pool, weights)
    lazy = StreamingBatchSource(policy, camera_store, pool, weights)
    ids = np.array([59, 10, 33, 33])
    (fb, fw), (lb, lw) = full.batch(ids), lazy.batch(ids)
    assert set(fb) == set(lb) and torch.equal(fw, lw)
    assert all(torch.equal(fb[k], lb[k]) for k in fb)
    with pytest.raises(IndexError):
        lazy.batch(np.array([0]))  # outside the pool, as for the in-memory source


@pytest.mark.slow
def test_benchmark_ingest_round_trips_the_generated_dataset_and_writes_its_csv(tmp_path):
    pytest.importorskip("tensorflow_datasets")
    args = scale_memory.parse_args(
        ["ingest", "--steps", "5", "--workdir", str(tmp_path), "--out", str(tmp_path)]
    )
    path = scale_memory.rlds_dataset(tmp_path, 20, args)
    stamp = (path / "dataset_info.json").stat().st_mtime_ns
    assert scale_memory.rlds_dataset(tmp_path, 20, args) == path  # cached: not written twice
    assert (path / "dataset_info.json").stat().st_mtime_ns == stamp
    assert not (tmp_path / "rlds_7x5_s39_a4").exists()  # 20 <= --distinct: written by write_rlds
    read = scale_memory.tfds_batched_read(str(path))
    done = scale_memory.ingest(str(path), str(tmp_path / "store"))
    assert (read["episodes"], read["steps"]) == (done["episodes"], done["steps"]) == (20, 100)
    assert not (tmp_path / "store").exists() and done["store_mib"] > 0
    # beyond --distinct, records repeat with their own ids: the same episodes as writing all of them
    args.distinct = 7
    repeated = scale_memory.rlds_dataset(tmp_path / "cycled", 20, args)
    store = ingest_rlds(repeated, tmp_path / "cycled_store", progress=False)
    assert store.episodes.episode_id == [f"scale/{i:07d}" for i in range(20)]
    assert np.array_equal(store.episode(9).actions, store.episode(2).actions)
    rows = [
        {"stage": "TFDS batched read", **read, "peak_rss_mib": 100.0},
        {"stage": "ingest_rlds -> store", **done, "peak_rss_mib": 110.0},
    ]
    scale_memory.add_rates(rows)
    assert rows[1]["time_vs_tfds_read"] == pytest.approx(done["wall_s"] / read["wall_s"])
    assert "time_vs_tfds_read" not in rows[0] and rows[0]["steps_per_s"] == 100 / read["wall_s"]
    scale_memory.write_csv(rows, scale_memory.INGEST_COLUMNS, tmp_path / "ingest.csv")
    with (tmp_path / "ingest.csv").open() as f:
        written = list(csv.DictReader(f))
    assert [r["stage"] for r in written] == ["TFDS batched read", "ingest_rlds -> store"]
    assert [r["episodes"] for r in written] == ["20", "20"] and written[1]["peak_rss_mib"] == "110.0"
    summary = scale_memory.ingest_summary(rows)
    assert summary[0].startswith("ingest of 20 episodes:")


@pytest.mark.slow
def test_benchmark_measures_a_child_process_peak_rss():
    out = scale_memory.spawned(_allocate, 64)
    assert out["bytes"] == 64 * 2**20 and out["peak_rss_mib"] > 64


def _allocate(mib: int) -> dict:
    """Touch `mib` MiB in the child, so its peak RSS must exceed it."""
    block = np.ones(mib * 2**20, np.uint8)
    return {"bytes": int(block.sum())}


def test_reading_a_split_in_slices_gives_the_same_episodes_in_the_same_order(tmp_path, monkeypatch):
    pytest.importorskip("tensorflow_datasets")
    from datamil.data import rlds
    from datamil.data.tfds_env import load_tf

    path = rlds.write_rlds(scale_memory.synthetic_episodes(9, 3, 4, 2), tmp_path, "sliced")
    whole = list(rlds.read_rlds(path, progress=False))
    monkeypatch.setattr(rlds, "_SLICE_EPISODES", 2)  # one tf.data pipeline per 2 episodes
    _, tfds = load_tf()
    builder = rlds.open_builder(path)
    assert rlds.split_slices(tfds, builder, "train") == [
        f"train[{i}:{min(i + 2, 9)}]" for i in range(0, 9, 2)
    ]
    assert rlds.split_slices(tfds, builder, "train[3:]", 3) == ["train[3:5]", "train[5:6]"]
    sliced = list(rlds.read_rlds(path, progress=False))
    assert [e.meta.episode_id for e in sliced] == [e.meta.episode_id for e in whole]
    assert all(np.array_equal(a.actions, b.actions) for a, b in zip(sliced, whole, strict=True))
    part = [
        e.meta.episode_id for e in rlds.read_rlds(path, split="train[3:]", max_episodes=4, progress=False)
    ]
    assert part == [e.meta.episode_id for e in whole[3:7]]

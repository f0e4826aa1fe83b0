"""Peak memory at scale: RLDS ingest of 1k to 50k episodes, and a 10k-episode image prior through the
frozen-feature path (encoder fit, features of every frame, cached).

Why: an Open X-Embodiment prior has tens of thousands of episodes; converting it, or encoding its frames,
must take memory bounded by a batch, not by the dataset. Each measurement runs in a fresh spawned process
and reports that process's peak RSS (ru_maxrss), so every number is that stage alone plus its imports
(the "import floor" rows). Ingest throughput is compared with TFDS's own batched read of the same files.

    python benchmarks/scale_memory.py                                  # both tables, the defaults below
    python benchmarks/scale_memory.py ingest --episodes 1000 10000 50000
    python benchmarks/scale_memory.py image --image-episodes 10000 --fit-steps 300

Generated datasets are cached under --workdir (default $DATAMIL_CACHE/scale_memory): reruns skip the
generation. Tables print and are written as CSV to --out (default benchmarks/results/scale_memory/).
Timings depend on the machine's load; peak RSS does not depend on it much.
"""

from __future__ import annotations

import argparse
import csv
import functools
import os
import resource
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from datamil.data.schema import Episode, EpisodeMeta

RESULTS = Path(__file__).resolve().parent / "results" / "scale_memory"
DATASET = "scale_memory"  # TFDS name of the generated RLDS datasets
MIB = 2**20
PREFIX = "scale"  # dataset name and episode id prefix of the generated ingest episodes


# ------------------------------------------------------------------------------------- generated data
def synthetic_episodes(
    n: int, steps: int, state_dim: int, action_dim: int, image_size: int = 0, prefix: str = "scale"
) -> Iterator[Episode]:
    """`n` seeded random-walk episodes (MetaWorld-like sizes), plus a drifting camera when image_size > 0."""
    rng = np.random.default_rng(0)
    for i in range(n):
        obs = {"state": np.cumsum(rng.normal(0, 0.01, (steps, state_dim)), axis=0).astype(np.float32)}
        if image_size:
            base = rng.integers(0, 256, (1, image_size, image_size, 3))
            obs["image_primary"] = ((base + np.arange(steps)[:, None, None, None]) % 256).astype(np.uint8)
        actions = np.clip(rng.normal(0, 0.5, (steps, action_dim)), -1, 1).astype(np.float32)
        meta = EpisodeMeta(f"{prefix}/{i:07d}", prefix, "reach", bool(i % 2))
        yield Episode(obs, actions, meta, language_instruction="reach the goal")


def rlds_dataset(workdir: Path, episodes: int, args: argparse.Namespace) -> Path:
    """The RLDS version directory of `episodes` generated episodes, written once (then reused).

    Up to `args.distinct` episodes are written by write_rlds (TFDS's writer, ~1k episodes a minute
    here); a larger dataset repeats those records in order, each with its own episode id, so 50k episodes
    take seconds to write. Readers decode every record alike, so repetition changes no cost measured."""
    from datamil.data.rlds import write_rlds

    root = workdir / f"rlds_{episodes}x{args.steps}_s{args.state_dim}_a{args.action_dim}"
    final = root / DATASET / "1.0.0"
    if (final / "dataset_info.json").is_file():
        return final
    if args.distinct < episodes:
        _replicate(rlds_dataset(workdir, args.distinct, args), final, episodes)
    else:
        write_rlds(synthetic_episodes(episodes, args.steps, args.state_dim, args.action_dim), root, DATASET)
    return final


def _replicate(source: Path, final: Path, episodes: int, per_shard: int = 10_000) -> None:
    """Write `episodes` records cycling through `source`'s, episode ids renumbered, shards of `per_shard`."""
    import json

    from datamil.data.tfds_env import load_tf
    from datamil.io import atomic_dir

    tf, _ = load_tf()
    info = json.loads((source / "dataset_info.json").read_text())
    split = info["splits"][0]
    shard_files = sorted(source.glob(f"{DATASET}-train.tfrecord-*"))
    records = [bytes(r) for r in tf.data.TFRecordDataset([str(f) for f in shard_files]).as_numpy_iterator()]
    lengths = [min(per_shard, episodes - lo) for lo in range(0, episodes, per_shard)]
    total = 0
    final.parent.mkdir(parents=True, exist_ok=True)
    with atomic_dir(final) as tmp:
        shutil.copy(source / "features.json", tmp / "features.json")
        index = 0
        for shard, length in enumerate(lengths):
            name = f"{DATASET}-train.tfrecord-{shard:05d}-of-{len(lengths):05d}"
            with tf.io.TFRecordWriter(str(tmp / name)) as writer:
                for _ in range(length):
                    k = index % len(records)
                    if _episode_id(k) not in records[k]:
                        raise RuntimeError(f"{source} has other episode ids; delete it and rerun")
                    record = records[k].replace(_episode_id(k), _episode_id(index), 1)
                    writer.write(record)
                    total, index = total + len(record), index + 1
        split.update(numBytes=str(total), shardLengths=[str(n) for n in lengths])
        (tmp / "dataset_info.json").write_text(json.dumps(info, indent=2))


def _episode_id(i: int) -> bytes:
    """Fixed-width ids, so a renumbered record keeps its length and its protobuf framing."""
    return f"{PREFIX}/{i:07d}".encode()


def image_stores(workdir: Path, args: argparse.Namespace) -> dict[str, Path]:
    """Memory-mapped stores {prior, target_train, target_val} of camera episodes, written once (streamed)."""
    from datamil.data.store import StoreWriter

    n, steps, size = args.image_episodes, args.image_steps, args.image_size
    root = workdir / f"image_{n}x{steps}_{size}px"
    sizes = {"prior": n, "target_train": args.target_episodes, "target_val": args.target_episodes}
    paths = {}
    for name, count in sizes.items():
        paths[name] = root / name
        if not (paths[name] / "meta.json").is_file():
            with StoreWriter(paths[name]) as writer:
                for episode in synthetic_episodes(count, steps, args.image_state_dim, 4, size, name):
                    writer.add(episode)
    return paths


def dir_mib(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / MIB


# ------------------------------------------------------------------------------------- child processes
def spawned(fn: Callable[..., dict], *args) -> dict:
    """fn(*args) in a fresh spawned process; its result plus that process's peak RSS in MiB."""
    with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
        return pool.submit(_with_peak, fn, *args).result()


def _with_peak(fn: Callable[..., dict], *args) -> dict:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    result = fn(*args)
    return {**result, "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def tf_floor() -> dict:
    """Import TensorFlow/TFDS and the reader, nothing else: the floor under every ingest number."""
    import datamil.data.rlds  # noqa: F401
    from datamil.data.tfds_env import load_tf

    load_tf()
    return {"episodes": 0, "steps": 0, "wall_s": 0.0}


def tfds_batched_episodes(path: str) -> Iterator[dict]:
    """TFDS's fastest plain read: each episode's steps batched in the tf.data graph, as numpy (the
    baseline of this benchmark's and data_throughput.py's ingest numbers)."""
    from datamil.data.tfds_env import load_tf

    tf, tfds = load_tf()
    builder = tfds.builder_from_directory(path)
    ds = builder.as_dataset(split="train", shuffle_files=False)
    ds = ds.map(
        lambda ep: {**ep, "steps": ep["steps"].batch(2**31 - 1).get_single_element()},
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    ).prefetch(2)
    yield from tfds.as_numpy(ds)


def tfds_batched_read(path: str) -> dict:
    """Episodes and steps of `tfds_batched_episodes`, and its wall time (opening the dataset included)."""
    from datamil.data.tfds_env import load_tf

    load_tf()  # imported before the clock starts, as it was when the read opened TFDS itself
    start = time.perf_counter()
    episodes = steps = 0
    for episode in tfds_batched_episodes(path):
        episodes, steps = episodes + 1, steps + len(episode["steps"]["action"])
    return {"episodes": episodes, "steps": steps, "wall_s": time.perf_counter() - start}


def ingest(path: str, store_path: str) -> dict:
    """ingest_rlds of the dataset into a store (removed afterwards); wall time includes opening it."""
    from datamil.data.rlds import ingest_rlds
    from datamil.data.tfds_env import load_tf

    load_tf()  # import outside the timing, as for the TFDS read
    start = time.perf_counter()
    store = ingest_rlds(path, store_path, progress=False)
    wall = time.perf_counter() - start
    out = {"episodes": store.n_episodes, "steps": store.n_steps, "wall_s": wall}
    out["store_mib"] = dir_mib(Path(store_path))
    del store
    shutil.rmtree(store_path)
    return out


def _image_policy(prior):
    from datamil.policies.build import build_policy
    from datamil.policies.vision import VisionPolicy

    size = tuple(prior.arrays["obs/image_primary"].shape[1:3])
    factory = functools.partial(VisionPolicy, image_keys=["image_primary"], image_size=size, shift_pad=2)
    return build_policy(factory, prior)


def image_floor(paths: dict[str, str]) -> dict:
    """Open the stores and build the image policy, nothing else: the floor under the frozen-path number."""
    from datamil.data.store import TrajectoryStore

    prior = TrajectoryStore.load(paths["prior"])
    _image_policy(prior)
    return {"frames": prior.n_steps, "wall_s": 0.0}


def frozen_path(paths: dict[str, str], fit_steps: int, cache: str, in_memory: bool = False) -> dict:
    """Fit the encoder by BC on prior + target-train, then features of every frame of the three stores
    (datamil.datamodels.features.frozen_feature_stores). in_memory, for contrast: the same steps with the
    fit data concatenated in memory (fit_encoder without a workdir), as the fit did before it streamed."""
    import torch

    from datamil.data.store import TrajectoryStore
    from datamil.datamodels.features import (
        FeatureCache,
        FitConfig,
        feature_store,
        fit_encoder,
        frozen_feature_stores,
    )

    torch.set_num_threads(1)
    stores = {name: TrajectoryStore.load(path) for name, path in paths.items()}
    policy = _image_policy(stores["prior"])
    fit = FitConfig(steps=fit_steps, batch_size=64)
    order = [stores["prior"], stores["target_val"], stores["target_train"]]
    start = time.perf_counter()
    if in_memory:
        params = fit_encoder(policy, [stores["prior"], stores["target_train"]], fit)
        fitted = time.perf_counter()
        cached = FeatureCache(Path(cache) / "features")
        prior = [feature_store(s, cached.features(policy, params, s)) for s in order][0]
        timings = {"fit_encoder": fitted - start, "encode": time.perf_counter() - fitted}
    else:
        prior, _, _, timings = frozen_feature_stores(policy, *order, fit, cache)
    wall = time.perf_counter() - start
    shutil.rmtree(cache, ignore_errors=True)
    return {
        "frames": sum(s.n_steps for s in stores.values()),
        "wall_s": wall,
        "fit_s": timings["fit_encoder"],
        "encode_s": timings["encode"],
        "feature_dim": int(prior.arrays["obs/state"].shape[1]),
    }


# ------------------------------------------------------------------------------------- the two tables
def ingest_rows(args: argparse.Namespace) -> list[dict]:
    """Per N: the TFDS batched read and ingest_rlds, each in its own process; plus the import floor."""
    rows = [{"stage": "import floor (tensorflow, tfds)", **spawned(tf_floor)}]
    for n in args.episodes:
        path = rlds_dataset(args.workdir, n, args)
        size = dir_mib(path)
        read = spawned(tfds_batched_read, os.fspath(path))  # first: it warms the page cache for ingest
        store = tempfile.mkdtemp(dir=args.workdir, prefix="store_")
        shutil.rmtree(store)
        done = spawned(ingest, os.fspath(path), store)
        if done["episodes"] != n or read["episodes"] != n:
            raise RuntimeError(
                f"expected {n} episodes, TFDS read {read['episodes']}, ingest {done['episodes']}"
            )
        rows.append({"stage": "TFDS batched read", **read, "dataset_mib": size})
        rows.append({"stage": "ingest_rlds -> store", **done, "dataset_mib": size})
    return rows


def image_rows(args: argparse.Namespace) -> list[dict]:
    """The frozen-feature path on the image prior (streamed, and in memory for contrast), plus its floor."""
    paths = {k: os.fspath(v) for k, v in image_stores(args.workdir, args).items()}
    frame_bytes = args.image_size**2 * 3
    rows = [{"stage": "import floor (torch, stores, policy)", **spawned(image_floor, paths)}]
    modes = [False, True] if args.contrast else [False]
    for in_memory in modes:
        cache = tempfile.mkdtemp(dir=args.workdir, prefix="features_")
        out = spawned(frozen_path, paths, args.fit_steps, cache, in_memory)
        name = "frozen features, fit data in memory" if in_memory else "frozen features (streamed)"
        rows.append({"stage": name, **out})
    for row in rows:
        row["episodes"] = args.image_episodes
        row["raw_frames_mib"] = row["frames"] * frame_bytes / MIB
    return rows


# ------------------------------------------------------------------------------------- output
INGEST_COLUMNS = [
    "stage",
    "episodes",
    "steps",
    "wall_s",
    "steps_per_s",
    "time_vs_tfds_read",
    "peak_rss_mib",
    "dataset_mib",
    "store_mib",
]
IMAGE_COLUMNS = [
    "stage",
    "episodes",
    "frames",
    "raw_frames_mib",
    "peak_rss_mib",
    "wall_s",
    "fit_s",
    "encode_s",
    "feature_dim",
]


def write_csv(rows: list[dict], columns: list[str], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, columns, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _fmt(row.get(k, "")) for k in columns})


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.1f}" if abs(value) >= 10 else f"{value:.3f}"
    return str(value)


def print_table(rows: list[dict], columns: list[str]) -> None:
    cells = [columns] + [[_fmt(r.get(k, "")) for k in columns] for r in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    for line in cells:
        print(
            " | ".join(
                c.ljust(w) if i == 0 else c.rjust(w)
                for i, (c, w) in enumerate(zip(line, widths, strict=True))
            )
        )


def add_rates(rows: list[dict]) -> None:
    """steps_per_s of every timed row, and each ingest's time over the TFDS read of the same episodes."""
    reads = {r["episodes"]: r for r in rows if r["stage"].startswith("TFDS")}
    for row in rows:
        row["steps_per_s"] = row["steps"] / row["wall_s"] if row["wall_s"] else ""
        if row["stage"].startswith("ingest") and row["episodes"] in reads:
            row["time_vs_tfds_read"] = row["wall_s"] / reads[row["episodes"]]["wall_s"]


def ingest_summary(rows: list[dict]) -> list[str]:
    """RSS(largest N) / RSS(smallest N) and ingest time / TFDS read time per N."""
    ingests = [r for r in rows if r["stage"].startswith("ingest")]
    lines = [
        f"ingest of {r['episodes']} episodes: {r['time_vs_tfds_read']:.2f}x the TFDS batched read's time"
        for r in ingests
    ]
    if len(ingests) > 1:
        lo, hi = ingests[0], ingests[-1]
        lines.append(
            f"peak RSS of ingest, {hi['episodes']} / {lo['episodes']} episodes: "
            f"{hi['peak_rss_mib'] / lo['peak_rss_mib']:.2f}x"
        )
    return lines


def run(args: argparse.Namespace) -> dict[str, list[dict]]:
    """Measure the requested tables, write their CSVs, print them; returns {table: rows}."""
    args.workdir.mkdir(parents=True, exist_ok=True)
    tables = {}
    if args.command in ("all", "ingest"):
        add_rates(rows := ingest_rows(args))
        write_csv(rows, INGEST_COLUMNS, args.out / "ingest.csv")
        print_table(rows, INGEST_COLUMNS)
        print("\n".join(ingest_summary(rows)) + "\n")
        tables["ingest"] = rows
    if args.command in ("all", "image"):
        rows = image_rows(args)
        write_csv(rows, IMAGE_COLUMNS, args.out / "image.csv")
        print_table(rows, IMAGE_COLUMNS)
        tables["image"] = rows
    return tables


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from datamil.data.sources import default_cache_dir

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("command", nargs="?", default="all", choices=["all", "ingest", "image"])
    p.add_argument("--episodes", type=int, nargs="+", default=[1000, 10000, 50000], help="ingest sizes")
    p.add_argument("--steps", type=int, default=20, help="steps per ingest episode")
    p.add_argument("--state-dim", type=int, default=39)
    p.add_argument("--action-dim", type=int, default=4)
    p.add_argument("--distinct", type=int, default=1000, help="distinct generated episodes; more repeat them")
    p.add_argument("--image-episodes", type=int, default=10000)
    p.add_argument("--image-steps", type=int, default=10, help="steps (frames) per image episode")
    p.add_argument("--image-size", type=int, default=32, help="square frames, also the encoder's input size")
    p.add_argument("--image-state-dim", type=int, default=8)
    p.add_argument("--target-episodes", type=int, default=50, help="target-train and target-val episodes")
    p.add_argument(
        "--fit-steps", type=int, default=300, help="encoder BC steps (the default config has 2000)"
    )
    p.add_argument(
        "--no-contrast",
        dest="contrast",
        action="store_false",
        help="skip the in-memory fit run shown for contrast",
    )
    p.add_argument("--workdir", type=Path, default=default_cache_dir() / "scale_memory")
    p.add_argument("--out", type=Path, default=RESULTS)
    return p.parse_args(argv)


if __name__ == "__main__":
    run(parse_args())

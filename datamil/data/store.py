"""A trajectory store: every step of every episode in flat contiguous arrays plus episode offsets.

Sampling a batch, or all steps of a set of episodes, is index arithmetic on these arrays. On disk the
store is a directory of raw little-endian arrays (`<name>.bin`) and one `meta.json`; loading maps the
arrays into memory instead of reading them. Array names: "obs/<key>" (e.g. "obs/state"), "action",
"reward", "is_first", "is_last", "is_terminal". Shapes: N total steps, E episodes.
"""

from __future__ import annotations

import json
import mmap
import os
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from datamil.data.normalization import NormStats
from datamil.data.schema import STEP_FLAGS, Episode, EpisodeMeta, is_image_key
from datamil.errors import DataError
from datamil.io import atomic_dir

FORMAT = "datamil-trajectory-store"
VERSION = 1
ACTION = "action"
REWARD = "reward"
OBS_PREFIX = "obs/"


def obs_array_name(key: str) -> str:
    return OBS_PREFIX + key


@dataclass
class EpisodeTable:
    """Per-episode metadata, one entry per episode, in store order."""

    episode_id: list[str]
    dataset: list[str]
    task: list[str]
    success: list[bool | None]
    language: list[str]

    @classmethod
    def empty(cls) -> EpisodeTable:
        return cls([], [], [], [], [])

    def append(self, meta: EpisodeMeta, language: str) -> None:
        self.episode_id.append(meta.episode_id)
        self.dataset.append(meta.dataset)
        self.task.append(meta.task)
        self.success.append(meta.success)
        self.language.append(language)

    def take(self, indices: Sequence[int]) -> EpisodeTable:
        return EpisodeTable(*([column[i] for i in indices] for column in self.columns()))

    def columns(self) -> tuple[list, ...]:
        return (self.episode_id, self.dataset, self.task, self.success, self.language)

    def to_dict(self) -> dict[str, list]:
        return dict(
            zip(("episode_id", "dataset", "task", "success", "language"), self.columns(), strict=True)
        )


def _episode_arrays(episode: Episode) -> dict[str, np.ndarray]:
    arrays = {obs_array_name(k): np.asarray(v) for k, v in episode.observations.items()}
    arrays[ACTION] = np.asarray(episode.actions, np.float32)
    arrays[REWARD] = np.asarray(episode.rewards, np.float32)
    for flag in STEP_FLAGS:
        arrays[flag] = np.asarray(getattr(episode, flag), bool)
    return arrays


def _stat_keys(array_names: Iterable[str]) -> list[str]:
    """Arrays that get normalization statistics: actions and non-image observations."""
    return [n for n in array_names if n == ACTION or (n.startswith(OBS_PREFIX) and not is_image_key(n[4:]))]


class TrajectoryStore:
    """Flat step arrays + episode offsets + per-dataset normalization statistics."""

    def __init__(
        self,
        arrays: dict[str, np.ndarray],
        offsets: np.ndarray,
        episodes: EpisodeTable,
        stats: dict[str, dict[str, NormStats]] | None = None,
    ) -> None:
        self.arrays = arrays
        self.offsets = np.asarray(offsets, np.int64)
        self.episodes = episodes
        self._check_consistent()
        self.stats = stats if stats is not None else self.compute_stats()
        self._episode_of_step: np.ndarray | None = None
        self._index_by_id: dict[str, int] | None = None

    # ---------------------------------------------------------------- construction
    @classmethod
    def from_episodes(cls, episodes: Iterable[Episode]) -> TrajectoryStore:
        """Build an in-memory store; every episode is validated against the first one's layout."""
        chunks: dict[str, list[np.ndarray]] = {}
        table, lengths = EpisodeTable.empty(), [0]
        for episode in episodes:
            arrays = _episode_arrays(episode.validate(_action_dim(chunks)))
            _check_same_layout(chunks, arrays, episode.meta)
            for name, value in arrays.items():
                chunks.setdefault(name, []).append(value)
            table.append(episode.meta, episode.language_instruction)
            lengths.append(len(episode))
        if not table.episode_id:
            raise DataError("no episodes to store; check the data source, filters or selection")
        arrays = {name: np.concatenate(parts) for name, parts in chunks.items()}
        return cls(arrays, np.cumsum(lengths), table)

    def _check_consistent(self) -> None:
        n = int(self.offsets[-1])
        for name, value in self.arrays.items():
            if len(value) != n:
                raise DataError(
                    f"store array {name!r} has {len(value)} steps, offsets say {n}; rebuild the store"
                )
        if len(self.offsets) - 1 != len(self.episodes.episode_id):
            raise DataError("store offsets and episode table disagree; rebuild the store")
        if len(set(self.episodes.episode_id)) != len(self.episodes.episode_id):
            raise DataError("store has duplicate episode ids; each episode needs a unique, stable id")

    def compute_stats(self) -> dict[str, dict[str, NormStats]]:
        """Normalization statistics per source dataset, for actions and every non-image observation."""
        return self.stats_by(self.episodes.dataset, _stat_keys(self.arrays))

    def stats_by(self, labels: Sequence[str], keys: Iterable[str]) -> dict[str, dict[str, NormStats]]:
        """{label: {array name: NormStats}} over the steps of the episodes carrying each label.

        labels: one per episode (its source dataset, or any grouping the caller normalizes by). Streamed a
        chunk of steps at a time (`NormStats.streamed`, the same numbers as `NormStats.of` on the gathered
        steps), so a store larger than memory gets its statistics in bounded memory.
        """
        labels = np.asarray(list(labels))
        keys = [k for k in keys if k in self.arrays]
        stats: dict[str, dict[str, NormStats]] = {}
        for label in sorted(set(labels.tolist())):
            episodes = np.flatnonzero(labels == label)
            n_rows = int(self.episode_lengths[episodes].sum())
            stats[label] = {
                key: NormStats.streamed(n_rows, self._dataset_reader(key, episodes)) for key in keys
            }
        return stats

    def _dataset_reader(self, key: str, episodes: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
        """read(positions) -> rows of array `key` at those positions of the episodes' concatenated steps."""
        lengths = self.episode_lengths[episodes]
        ends = np.cumsum(lengths)

        def read(positions: np.ndarray) -> np.ndarray:
            which = np.searchsorted(ends, positions, side="right")
            steps = self.offsets[episodes[which]] + positions - (ends[which] - lengths[which])
            return self.read(steps, [key])[key]

        return read

    # ---------------------------------------------------------------- shape of the data
    @property
    def n_steps(self) -> int:
        return int(self.offsets[-1])

    @property
    def n_episodes(self) -> int:
        return len(self.offsets) - 1

    def __len__(self) -> int:
        return self.n_episodes

    @property
    def obs_keys(self) -> list[str]:
        return sorted(n[len(OBS_PREFIX) :] for n in self.arrays if n.startswith(OBS_PREFIX))

    @property
    def action_dim(self) -> int:
        return int(self.arrays[ACTION].shape[1])

    @property
    def episode_lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    @property
    def episode_of_step(self) -> np.ndarray:
        """(N,) episode index of every step."""
        if self._episode_of_step is None:
            self._episode_of_step = np.repeat(np.arange(self.n_episodes), self.episode_lengths)
        return self._episode_of_step

    # ---------------------------------------------------------------- indexing
    def index_of(self, episode_ids: Iterable[str]) -> np.ndarray:
        """Episode indices of the given ids; unknown ids fail loudly (a selection from another store)."""
        if self._index_by_id is None:
            self._index_by_id = {eid: i for i, eid in enumerate(self.episodes.episode_id)}
        ids = list(episode_ids)
        missing = [e for e in ids if e not in self._index_by_id]
        if missing:
            raise DataError(
                f"{len(missing)} episode ids are not in this store (first: {missing[0]!r}); "
                "the selection was made on a different dataset"
            )
        return np.asarray([self._index_by_id[e] for e in ids], np.int64)

    def step_indices(self, episode_indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """(n,) flat step indices of all steps of the given episodes, in the given order."""
        episode_indices = np.asarray(episode_indices, np.int64)
        if len(episode_indices) == 0:
            return np.zeros(0, np.int64)
        starts, lengths = self.offsets[episode_indices], self.episode_lengths[episode_indices]
        within = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        return np.repeat(starts, lengths) + within

    def batch(self, step_indices: np.ndarray, keys: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """Gather steps: returns {"obs/<key>": (B, ...), "action": (B, A), "index": (B,)}."""
        names = keys if keys is not None else [n for n in self.arrays if n.startswith(OBS_PREFIX)] + [ACTION]
        out = {name: self.arrays[name][step_indices] for name in names}
        out["index"] = np.asarray(step_indices, np.int64)
        return out

    def read(self, step_indices: np.ndarray, keys: Sequence[str]) -> dict[str, np.ndarray]:
        """{key: (B, ...)} rows of the given arrays, like `batch` but read from disk with positioned reads
        when the store is memory-mapped (`read_rows`): for passes over a store larger than memory."""
        return {key: read_rows(self.arrays[key], step_indices) for key in keys}

    def sample_steps(
        self, rng: np.random.Generator, batch_size: int, pool: np.ndarray | None = None
    ) -> np.ndarray:
        """Uniform random step indices, from all steps or from `pool` (flat step indices)."""
        if pool is None:
            return rng.integers(0, self.n_steps, batch_size)
        return pool[rng.integers(0, len(pool), batch_size)]

    def episode(self, index: int) -> Episode:
        """Episode `index` as an Episode (views into the flat arrays, no copy)."""
        lo, hi = int(self.offsets[index]), int(self.offsets[index + 1])
        return self._episode_of(index, {name: array[lo:hi] for name, array in self.arrays.items()})

    def read_episode(self, index: int, keys: Collection[str] | None = None) -> Episode:
        """Episode `index` as an Episode of in-memory copies read from disk (`read`), unlike `episode`'s
        views: copying a memory-mapped store episode by episode then keeps one episode in memory.

        keys: the observation arrays to keep (e.g. {"obs/image_primary"}); None = all.
        """
        lo, hi = int(self.offsets[index]), int(self.offsets[index + 1])
        names = [n for n in self.arrays if not n.startswith(OBS_PREFIX) or keys is None or n in keys]
        return self._episode_of(index, self.read(np.arange(lo, hi), names))

    def _episode_of(self, index: int, arrays: dict[str, np.ndarray]) -> Episode:
        """The Episode of episode `index` from its step arrays (views or copies) and the episode table."""
        obs = {n[len(OBS_PREFIX) :]: v for n, v in arrays.items() if n.startswith(OBS_PREFIX)}
        meta = EpisodeMeta(
            self.episodes.episode_id[index],
            self.episodes.dataset[index],
            self.episodes.task[index],
            self.episodes.success[index],
        )
        flags = {flag: arrays[flag] for flag in STEP_FLAGS}
        return Episode(
            obs,
            arrays[ACTION],
            meta,
            arrays[REWARD],
            language_instruction=self.episodes.language[index],
            **flags,
        )

    def subset(self, episode_indices: Sequence[int] | np.ndarray) -> TrajectoryStore:
        """An in-memory store of the given episodes; statistics are kept from the parent store."""
        episode_indices = np.asarray(episode_indices, np.int64)
        if len(episode_indices) == 0:
            raise DataError("empty episode subset; select at least one episode")
        steps = self.step_indices(episode_indices)
        arrays = {name: np.ascontiguousarray(value[steps]) for name, value in self.arrays.items()}
        offsets = np.concatenate([[0], np.cumsum(self.episode_lengths[episode_indices])])
        return TrajectoryStore(arrays, offsets, self.episodes.take(episode_indices), self.stats)

    @classmethod
    def concat(cls, stores: Sequence[TrajectoryStore]) -> TrajectoryStore:
        """One in-memory store of all episodes of `stores`, in order (e.g. target demos + selected prior).

        Statistics are recomputed per source dataset over the combined episodes.
        """
        stores = [s for s in stores if s.n_episodes > 0]
        if not stores:
            raise DataError("nothing to concatenate: every store is empty")
        names = set(stores[0].arrays)
        for other in stores[1:]:
            if set(other.arrays) != names:
                raise DataError(
                    f"cannot combine stores with arrays {sorted(names)} and {sorted(other.arrays)}; "
                    "standardize them to the same observation keys"
                )
            for name in sorted(names):
                ours, theirs = stores[0].arrays[name].shape[1:], other.arrays[name].shape[1:]
                if ours != theirs:
                    image = name.startswith(OBS_PREFIX) and is_image_key(name[len(OBS_PREFIX) :])
                    hint = " (resize the cameras to one size first)" if image else ""
                    raise DataError(
                        f"cannot combine stores: {name!r} is {tuple(ours)} per step in one and "
                        f"{tuple(theirs)} in another{hint}"
                    )
        arrays = {name: np.concatenate([np.asarray(s.arrays[name]) for s in stores]) for name in names}
        offsets = np.concatenate([[0], np.cumsum(np.concatenate([s.episode_lengths for s in stores]))])
        columns = zip(*(s.episodes.columns() for s in stores), strict=True)
        table = EpisodeTable(*(sum(parts, []) for parts in columns))
        return cls(arrays, offsets, table)

    def pooled_stats(self, name: str) -> NormStats:
        """Statistics of array `name` over all steps of this store (e.g. for a policy trained on a mixture)."""
        return NormStats.streamed(self.n_steps, lambda rows: read_rows(self.arrays[name], rows))

    # ---------------------------------------------------------------- disk
    def save(self, path: str | Path) -> Path:
        """Write atomically: the store directory appears whole or not at all."""
        with atomic_dir(path) as tmp:
            for name, value in self.arrays.items():
                np.ascontiguousarray(value).tofile(tmp / _file_name(name))
            np.save(tmp / "offsets.npy", self.offsets)
            (tmp / "meta.json").write_text(json.dumps(self._meta(), indent=1))
        return Path(path)

    def _meta(self) -> dict:
        return {
            "format": FORMAT,
            "version": VERSION,
            "n_steps": self.n_steps,
            "arrays": {n: {"dtype": v.dtype.str, "shape": list(v.shape[1:])} for n, v in self.arrays.items()},
            "episodes": self.episodes.to_dict(),
            "stats": {d: {k: s.to_dict() for k, s in per.items()} for d, per in self.stats.items()},
        }

    @classmethod
    def load(cls, path: str | Path, mmap: bool = True) -> TrajectoryStore:
        """Open a saved store; arrays are memory-mapped read-only unless mmap=False."""
        path = Path(path)
        meta_path = path / "meta.json"
        if not meta_path.is_file():
            raise DataError(f"{path} is not a datamil trajectory store (no meta.json); build it with save()")
        meta = json.loads(meta_path.read_text())
        if meta.get("format") != FORMAT or meta.get("version") != VERSION:
            raise DataError(
                f"{path} has store format {meta.get('format')} v{meta.get('version')}; rebuild it"
            )
        n = meta["n_steps"]
        arrays = {}
        for name, spec in meta["arrays"].items():
            shape = (n, *spec["shape"])
            if mmap and n > 0:
                arrays[name] = np.memmap(path / _file_name(name), np.dtype(spec["dtype"]), "r", shape=shape)
            else:
                arrays[name] = np.fromfile(path / _file_name(name), np.dtype(spec["dtype"])).reshape(shape)
        stats = {d: {k: NormStats.from_dict(s) for k, s in per.items()} for d, per in meta["stats"].items()}
        episodes = EpisodeTable(**meta["episodes"])
        return cls(arrays, np.load(path / "offsets.npy"), episodes, stats)


def read_rows(array: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """array[rows] as a new in-memory array; a whole memory-mapped store file is read with positioned reads.

    Why not index the map: every page touched through a map stays resident and counts toward the
    process's RSS until the kernel needs the memory, so one pass over a 10 GB store would show as 10 GB.
    Reads go through the page cache instead, which the kernel can drop at any time. Contiguous runs of
    `rows` are read in one call each; any order and repeats are allowed.
    """
    rows = np.asarray(rows, np.int64)
    if not (isinstance(array, np.memmap) and isinstance(array.base, mmap.mmap)) or len(rows) == 0:
        return np.asarray(array[rows])
    order = np.argsort(rows, kind="stable")
    ordered = rows[order]
    if ordered[0] < 0 or ordered[-1] >= len(array):
        raise IndexError(f"rows outside the array's {len(array)} rows")
    out = np.empty((len(rows), *array.shape[1:]), array.dtype)
    row_bytes = out.itemsize * int(np.prod(array.shape[1:], dtype=np.int64))
    breaks = np.flatnonzero(np.diff(ordered) != 1) + 1
    starts, ends = np.concatenate([[0], breaks]), np.concatenate([breaks, [len(rows)]])
    target = out if np.all(order[:-1] < order[1:]) else np.empty_like(out)
    with open(array.filename, "rb", buffering=0) as f:
        for a, b in zip(starts.tolist(), ends.tolist(), strict=True):
            want = (b - a) * row_bytes
            got = os.preadv(
                f.fileno(), [memoryview(target[a:b]).cast("B")], array.offset + int(ordered[a]) * row_bytes
            )
            if got != want:
                raise DataError(f"{array.filename} is shorter than its store says; rebuild the store")
    if target is not out:
        out[order] = target
    return out


def _file_name(array_name: str) -> str:
    return array_name.replace("/", "__") + ".bin"


def _action_dim(chunks: dict[str, list[np.ndarray]]) -> int | None:
    return chunks[ACTION][0].shape[1] if ACTION in chunks else None


def _check_same_layout(
    chunks: dict[str, list[np.ndarray]], arrays: dict[str, np.ndarray], meta: EpisodeMeta
) -> None:
    if not chunks:
        return
    if set(chunks) != set(arrays):
        raise DataError(
            f"episode {meta.episode_id!r} has keys {sorted(arrays)}, earlier episodes have {sorted(chunks)}; "
            "standardize all datasets to the same observation keys"
        )
    for name, value in arrays.items():
        first = chunks[name][0]
        if value.shape[1:] != first.shape[1:]:
            raise DataError(
                f"episode {meta.episode_id!r}: {name!r} has shape {value.shape[1:]} per step, "
                f"earlier episodes have {first.shape[1:]}; standardize the datasets first"
            )


class StoreWriter:
    """Streams episodes to a store on disk without holding the dataset in memory.

    Use as a context manager; the store appears at `path` only when the block ends without error.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._context = atomic_dir(self.path)
        self._files: dict[str, object] = {}
        self._layout: dict[str, tuple[np.dtype, tuple[int, ...]]] = {}
        self._table, self._lengths = EpisodeTable.empty(), [0]
        self._ids: set[str] = set()

    def __enter__(self) -> StoreWriter:
        self._tmp = self._context.__enter__()
        return self

    def add(self, episode: Episode) -> None:
        action_dim = self._layout[ACTION][1][0] if ACTION in self._layout else None
        arrays = _episode_arrays(episode.validate(action_dim))
        if episode.meta.episode_id in self._ids:
            raise DataError(f"duplicate episode id {episode.meta.episode_id!r}; episode ids must be unique")
        if self._layout:
            _check_same_layout(
                {n: [np.empty((0, *s), d)] for n, (d, s) in self._layout.items()}, arrays, episode.meta
            )
        for name, value in arrays.items():
            if name not in self._files:
                self._layout[name] = (value.dtype, value.shape[1:])
                self._files[name] = open(self._tmp / _file_name(name), "wb")  # noqa: SIM115
            np.ascontiguousarray(value, self._layout[name][0]).tofile(self._files[name])
        self._ids.add(episode.meta.episode_id)
        self._table.append(episode.meta, episode.language_instruction)
        self._lengths.append(len(episode))

    def __exit__(self, exc_type, exc, tb) -> bool:
        for f in self._files.values():
            f.close()
        if exc_type is None:
            if not self._table.episode_id:
                exc = DataError("no episodes were written; check the data source and its filters")
                self._context.__exit__(DataError, exc, None)
                raise exc
            self._finalize()
        return bool(self._context.__exit__(exc_type, exc, tb))

    def _finalize(self) -> None:
        offsets = np.cumsum(self._lengths)
        np.save(self._tmp / "offsets.npy", offsets)
        n = int(offsets[-1])
        arrays = {
            name: np.memmap(self._tmp / _file_name(name), dtype, "r", shape=(n, *shape))
            for name, (dtype, shape) in self._layout.items()
        }
        store = TrajectoryStore(arrays, offsets, self._table)
        (self._tmp / "meta.json").write_text(json.dumps(store._meta(), indent=1))
        del arrays, store

"""RLDS (TFDS) episode datasets: write ours, stream anyone's through the OXE standardization registry.

Why TFDS itself: every Open X-Embodiment dataset is a TFDS directory of RLDS episodes, and the PyPI `rlds`
package no longer imports. TensorFlow is an optional extra (`datamil[tf]`), imported only in here.

On disk a dataset is `<data_dir>/<name>/<version>/` (dataset_info.json, features.json, tfrecord shards),
one episode per example:

    steps: Dataset({observation: {state: (D,) float32, image_*: Image (H, W, C) uint8},
                    action: (A,) float32, reward, discount: float32, is_first, is_last, is_terminal: bool,
                    language_instruction: Text})
    episode_metadata: {episode_id, dataset, task: Text, success: int32 (-1 unknown, 0, 1)}

Reading streams one episode at a time and turns each episode's steps into numpy in one batched tf.data op
(no per-step Python). Small episodes also travel several to one tf.data element (a ragged batch, split
back in numpy): tf.data's Python iterator costs about a millisecond per element, which otherwise is most
of the time of a state-only read (benchmarks/scale_memory.py measures ingest against TFDS's own read).
"""

from __future__ import annotations

import itertools
import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from datamil.data.oxe import DATAMIL, STANDARDIZATIONS, Standardization, get_standardization, lookup
from datamil.data.rlds_writer import DATAMIL_META_KEYS, write_rlds  # noqa: F401  (re-exported)
from datamil.data.schema import STEP_FLAGS, Episode, EpisodeMeta
from datamil.data.store import StoreWriter, TrajectoryStore
from datamil.data.tfds_env import load_tf, quiet
from datamil.errors import DataError, UnknownNameError

_ALL_STEPS = 2**31 - 1  # batch size that puts a whole episode's steps in one batch
_SLICE_EPISODES = 2000  # episodes read per tf.data pipeline (see split_slices)
_BATCH_BYTES = 64 * 2**20  # bound on one tf.data element of several episodes (see episodes_per_element)
_BOUND_STEPS = 1000  # steps per episode assumed when sizing that element
_MAX_EPISODES_PER_ELEMENT = 64
_SHARD_ID = re.compile(r"-(\d+)-of-(\d+)__(\d+)$")


def open_builder(source: str | os.PathLike, data_dir: str | None = None) -> Any:
    """A TFDS builder for a dataset directory (version dir or the `<name>/` above it) or a dataset name."""
    tf, tfds = load_tf()
    text = os.fspath(source)
    is_path = (
        isinstance(source, os.PathLike) or text.startswith("gs://") or os.sep in text or Path(text).exists()
    )
    with quiet(tf, tfds):
        if is_path:
            version_dir = _version_dir(text)
            try:
                return tfds.builder_from_directory(version_dir)
            except Exception as e:  # noqa: BLE001 - any TFDS failure here means "not a readable dataset"
                raise DataError(
                    f"{version_dir} is not a readable TFDS/RLDS dataset ({_first_line(e)})"
                ) from None
        try:
            return tfds.builder(text, data_dir=data_dir)
        except tfds.core.registered.DatasetNotFoundError:
            hint = "pass a dataset directory, or the data_dir that holds it (e.g. gs://gresearch/robotics)"
            raise UnknownNameError("RLDS dataset", text, _names_in(data_dir), hint) from None


def _version_dir(path: str) -> str:
    """`path` if it holds dataset_info.json, else its newest version subdirectory (one or two levels down)."""
    from etils import epath

    root = epath.Path(path)
    if (root / "dataset_info.json").exists():
        return os.fspath(root)
    if not root.exists():
        raise DataError(
            f"{path} does not exist; pass an RLDS dataset directory such as <data_dir>/<name>/<version>"
        )
    candidates = [d for d in root.glob("*/dataset_info.json")] + [
        d for d in root.glob("*/*/dataset_info.json")
    ]
    if not candidates:
        raise DataError(
            f"{path} is not an RLDS/TFDS dataset directory (no dataset_info.json in it or a version "
            "subdirectory); pass <data_dir>/<name>/<version> as written by tfds or write_rlds()"
        )
    return os.fspath(max((c.parent for c in candidates), key=lambda d: _version_key(d.name)))


def _version_key(name: str) -> tuple[int, ...]:
    return tuple(int(p) if p.isdigit() else -1 for p in name.split("."))


def _names_in(data_dir: str | None) -> list[str]:
    if data_dir is None or not Path(data_dir).is_dir():
        return []
    return sorted(d.name for d in Path(data_dir).iterdir() if d.is_dir() and not d.name.startswith("."))


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def is_datamil_layout(features: Any) -> bool:
    """True for datasets written by write_rlds (our episode_metadata keys)."""
    return "episode_metadata" in features and set(DATAMIL_META_KEYS) <= set(
        features["episode_metadata"].keys()
    )


def resolve_standardization(builder: Any, name: str | None = None) -> Standardization:
    """The OXE entry to use: the given name, else the builder's name, else ours for write_rlds datasets."""
    if name is not None:
        return get_standardization(name)
    if builder.name in STANDARDIZATIONS:
        return get_standardization(builder.name)
    if is_datamil_layout(builder.info.features):
        return get_standardization(DATAMIL)
    hint = "pass standardization=<name of a dataset with the same layout>, or register an entry in datamil.data.oxe"
    raise UnknownNameError("OXE dataset", builder.name, STANDARDIZATIONS.names(), hint)


def read_rlds(
    source: str | os.PathLike,
    standardization: str | None = None,
    split: str = "train",
    data_dir: str | None = None,
    max_episodes: int | None = None,
    progress: bool = True,
    images: bool = True,
    image_keys: Mapping[str, str] | None = None,
    grayscale_to_rgb: bool = False,
) -> Iterator[Episode]:
    """Stream a dataset's episodes in the common schema, one at a time, in a fixed order.

    source: a dataset directory or a dataset name (looked up in `data_dir`, e.g. gs://gresearch/robotics).
    standardization: OXE registry entry; default: by dataset name, or ours for write_rlds datasets.
    images: False skips decoding every camera (much faster when only state and actions are needed).
    image_keys: raw camera -> our image key, e.g. {"image_1": "image_primary"}, instead of the cameras
        the registry entry reads (a raw observation key, or a "/"-path in the steps).
    grayscale_to_rgb: repeat the channel of one-channel cameras; otherwise they fail with a DataError.
    Episode ids: ours keep their stored id; other datasets get f"{name}/{split}/{index}", index being
    the episode's position in the whole split (stable under split slicing such as "train[10:20]").
    Setup errors (not a dataset, unknown name or split) raise here; malformed episodes raise DataError
    when reached.
    """
    tf, tfds = load_tf()
    builder = open_builder(source, data_dir)
    spec = resolve_standardization(builder, standardization)
    if not images:
        spec = spec.without_images()
    elif image_keys:
        spec = _remap_cameras(builder, spec, image_keys)
    total = _split_size(builder, split)
    total = total if max_episodes is None else min(total, max_episodes)
    slices = split_slices(tfds, builder, split, max_episodes)

    def dataset(part: str, batched: bool = True) -> tuple[Any, bool]:
        return _episode_dataset(tf, tfds, builder, spec, part, images, batched)

    first = dataset(slices[0]) if slices else None  # setup errors (bad keys, decoders) raise here
    datasets = itertools.chain(
        [(slices[0], first)] if first is not None else [],
        ((part, dataset(part)) for part in slices[1:]),
    )
    reader = _EpisodeReader(builder, spec, split.split("[")[0], images, grayscale_to_rgb)
    return _stream(tf, datasets, dataset, reader, total, progress)


def split_slices(tfds: Any, builder: Any, split: str, limit: int | None = None) -> list[str]:
    """`split` (TFDS slicing allowed) as consecutive slices "name[a:b]" of at most `_SLICE_EPISODES`
    episodes, in read order, ending after `limit` episodes.

    Why: TFDS's reader keeps about 7 KB for every episode a pipeline has read until that pipeline is
    dropped (measured with benchmarks/scale_memory.py), so one pipeline over a 50k-episode split grows by
    some 350 MB. A fresh pipeline per slice reads the same episodes in the same order in bounded memory.
    """
    slices, left = [], limit
    for part in tfds.core.ReadInstruction.from_spec(split).to_absolute(builder.info.splits):
        start = part.from_ or 0
        end = builder.info.splits[part.splitname].num_examples if part.to is None else part.to
        for lo in range(start, end, _SLICE_EPISODES):
            hi = min(lo + _SLICE_EPISODES, end)
            if left is not None:
                hi = min(hi, lo + left)
                left -= hi - lo
            if hi > lo:
                slices.append(f"{part.splitname}[{lo}:{hi}]")
    return slices


def _remap_cameras(builder: Any, spec: Standardization, image_keys: Mapping[str, str]) -> Standardization:
    """`spec` reading the given cameras; a camera the dataset lacks fails here, listing the ones it has."""
    remapped = spec.with_image_keys(image_keys)
    cameras = image_paths(builder.info.features)
    missing = [p for p in remapped.images.values() if p not in cameras]  # type: ignore[union-attr]
    if missing:
        have = sorted(p.removeprefix("observation/") for p in cameras)
        raise DataError(
            f"{builder.name} has no camera {missing[0].removeprefix('observation/')!r}; its cameras are "
            f"{have}; fix image_keys (data.prior_image_keys / data.target_image_keys)"
        )
    return remapped


def _split_size(builder: Any, split: str) -> int:
    """Episodes in `split` (TFDS slicing like "train[:10%]" allowed); DataError naming the valid splits."""
    if not builder.info.splits:
        raise DataError(
            f"{builder.name} has no prepared data in {builder.data_dir}; prepare it or pass its data_dir"
        )
    try:
        return builder.info.splits[split].num_examples
    except (KeyError, ValueError):
        raise DataError(
            f"{builder.name} has no split {split!r}; available: {sorted(builder.info.splits)}"
        ) from None


def _episode_dataset(
    tf: Any, tfds: Any, builder: Any, spec: Standardization, split: str, images: bool, batched: bool = True
) -> tuple[Any, bool]:
    """tf.data of episodes whose `steps` are already batched into (T, ...) tensors, and whether its
    elements are ragged batches of several episodes (`batched` and small episodes, see
    episodes_per_element) rather than one episode each."""
    cameras = image_paths(builder.info.features)
    used = spec.image_paths(cameras) if images else []
    decoders = _skip_decoders(tfds, [p for p in cameras if p not in used])
    with quiet(tf, tfds):
        ds = builder.as_dataset(
            split=split,
            shuffle_files=False,
            decoders=decoders or None,
            read_config=tfds.ReadConfig(add_tfds_id=True),
        )

    def batch_steps(episode: dict) -> dict:
        return {**episode, "steps": episode["steps"].batch(_ALL_STEPS).get_single_element()}

    ds = ds.map(batch_steps, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    per_element = episodes_per_element(tf, ds.element_spec) if batched else 1
    if per_element > 1:
        ds = ds.ragged_batch(per_element)
    return ds.prefetch(2), per_element > 1


def episodes_per_element(tf: Any, element_spec: Any) -> int:
    """How many episodes one tf.data element carries: as many as fit `_BATCH_BYTES` at `_BOUND_STEPS`
    steps each (state-only episodes: the maximum; camera episodes: one or a few), and 1 when a feature's
    shape is not static beyond time, which a ragged batch could not split back per episode."""
    steps = tf.nest.flatten(element_spec["steps"])
    rest = tf.nest.flatten({k: v for k, v in element_spec.items() if k != "steps"})
    if not all(s.shape[1:].is_fully_defined() for s in steps) or not all(
        s.shape.is_fully_defined() for s in rest
    ):
        return 1
    step_bytes = sum(
        int(np.prod(s.shape[1:], dtype=np.int64)) * (64 if s.dtype == tf.string else s.dtype.size)
        for s in steps
    )
    fit = _BATCH_BYTES // max(1, step_bytes * _BOUND_STEPS)
    return int(np.clip(fit, 1, _MAX_EPISODES_PER_ELEMENT))


def _split_element(tf: Any, element: Any, is_batch: bool) -> Iterator[dict]:
    """The episodes of one tf.data element as numpy trees: one episode as is, or a ragged batch split
    along its row splits (steps) and first axis (episode-level features)."""
    if not is_batch:  # as tfds.as_numpy converts an element: tensors to numpy, ragged features as they are
        yield tf.nest.map_structure(lambda x: x.numpy() if isinstance(x, tf.Tensor) else x, element)
        return
    leaves = tf.nest.flatten(element)
    parts = []
    for leaf in leaves:
        if isinstance(leaf, tf.RaggedTensor):
            values, splits = leaf.flat_values.numpy(), leaf.row_splits.numpy()
            parts.append([values[a:b] for a, b in zip(splits[:-1], splits[1:], strict=True)])
        else:
            parts.append(list(leaf.numpy()))
    for episode in zip(*parts, strict=True):
        yield tf.nest.pack_sequence_as(element, list(episode))


def image_paths(features: Any) -> list[str]:
    """ "/"-joined paths (relative to steps) of every Image feature in the steps of an RLDS dataset."""
    from tensorflow_datasets.core.features import Image

    def walk(feature: Any, prefix: str) -> Iterator[str]:
        if isinstance(feature, Image):
            yield prefix
        elif hasattr(feature, "keys"):
            for key in feature.keys():
                yield from walk(feature[key], f"{prefix}/{key}" if prefix else key)

    return list(walk(features["steps"].feature, ""))


def _skip_decoders(tfds: Any, paths: list[str]) -> dict:
    """Nested TFDS decoders that leave the given step images encoded (and so cost nothing to read)."""
    steps: dict = {}
    for path in paths:
        *parents, leaf = path.split("/")
        node = steps
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = tfds.decode.SkipDecoding()
    return {"steps": steps} if steps else {}


def _stream(
    tf: Any,
    datasets: Iterator[tuple[str, tuple[Any, bool]]],
    dataset: Any,
    reader: _EpisodeReader,
    total: int,
    progress: bool,
) -> Iterator[Episode]:
    """Episodes of each (slice, tf.data) in turn. A read error inside a batch of episodes re-reads that
    slice from the batch's first episode one at a time, so the error names the exact episode (and a
    read that then succeeds goes on with the next slice)."""
    from tqdm import tqdm

    position = 0
    with tqdm(total=total, desc=reader.name, unit="ep", disable=not progress) as bar:
        for part, (ds, is_batch) in datasets:
            start = position
            for retry in (False, True):  # a failed batch is re-read once, one episode at a time
                try:
                    for element in ds:
                        for raw in _split_element(tf, element, is_batch):
                            yield reader.episode(raw, position)
                            position += 1
                            bar.update()
                    break
                except tf.errors.OpError as error:  # a corrupt shard or an undecodable frame
                    if retry:
                        raise DataError(
                            f"{reader.name}: unreadable data in episode #{position} (counting from 0 in read "
                            f"order): {_tf_cause(error)}; re-write or re-download the dataset"
                        ) from None
                    name, (lo, hi) = _slice_bounds(part)
                    (ds, _), is_batch = dataset(f"{name}[{lo + position - start}:{hi}]", batched=False), False


def _slice_bounds(part: str) -> tuple[str, tuple[int, int]]:
    """'train[10:20]' -> ('train', (10, 20)), as split_slices writes them."""
    name, bounds = part[:-1].split("[")
    lo, hi = bounds.split(":")
    return name, (int(lo), int(hi))


def _tf_cause(error: Any) -> str:
    """The innermost reason of a tf.data error (e.g. "Invalid PNG data, size 100"), without TF's node names."""
    text = str(error.message or "").strip()
    first = text.splitlines()[0] if text else type(error).__name__
    first = re.sub(r"\{\{[^}]*\}\}|\s*\[Op:[^\]]*\].*$", "", first)
    return first.rsplit(": ", 1)[-1].strip()


class _EpisodeReader:
    """Turns one raw numpy episode (steps batched over time) into a validated Episode."""

    def __init__(
        self, builder: Any, spec: Standardization, split: str, images: bool, grayscale_to_rgb: bool = False
    ) -> None:
        self.name, self.spec, self.split = builder.name, spec, split
        self.ours = is_datamil_layout(builder.info.features)
        shard_lengths = builder.info.splits[split].shard_lengths or []
        self.shard_offsets = np.concatenate([[0], np.cumsum(shard_lengths)]).astype(int)
        cameras = image_paths(builder.info.features)
        self.skip = [] if images else cameras
        self.cameras = spec.image_paths(cameras) if images else []
        self.grayscale_to_rgb = grayscale_to_rgb

    def episode(self, raw: dict, position: int) -> Episode:
        steps = raw.pop("steps")
        for path in self.skip:
            _pop_path(steps, path)
        meta = self.meta(raw, position)
        where = f"episode {meta.episode_id!r} of {self.name!r}"
        self.check_cameras(raw, where)
        if self.grayscale_to_rgb:
            for path in self.cameras:
                _set_path(steps, path, _to_rgb(lookup(steps, path)))
        standard = self.spec(steps, where)
        flags = {flag: np.asarray(steps[flag], bool) if flag in steps else None for flag in STEP_FLAGS}
        rewards = np.asarray(steps["reward"], np.float32).reshape(-1) if "reward" in steps else None
        if not self.ours and not meta.task:
            meta = EpisodeMeta(meta.episode_id, meta.dataset, standard.language, meta.success)
        episode = Episode(
            standard.observations,
            standard.actions,
            meta,
            rewards,
            language_instruction=standard.language,
            **flags,
        )
        return episode.validate(self.spec.action_dim)

    def check_cameras(self, raw: dict, where: str) -> None:
        """DataError when the dataset says this episode lacks a camera we read (its frames are blank)."""
        for path in self.cameras:
            flag = self.spec.image_present.get(path)
            try:
                present = flag is None or bool(np.asarray(lookup(raw, flag)))
            except KeyError:
                present = True  # the dataset does not say
            if not present:
                raise DataError(
                    f"{where} has no camera {path!r} ({flag} is false: its frames are blank); read a "
                    "camera every episode has (data.prior_image_keys / data.target_image_keys)"
                )

    def meta(self, raw: dict, position: int) -> EpisodeMeta:
        if self.ours:
            m = raw["episode_metadata"]
            success = int(m["success"])
            return EpisodeMeta(
                _text(m["episode_id"]),
                _text(m["dataset"]),
                _text(m["task"]),
                None if success < 0 else bool(success),
            )
        success = self.spec.success(raw) if self.spec.success else None
        return EpisodeMeta(f"{self.name}/{self.split}/{self.index(raw, position)}", self.name, "", success)

    def index(self, raw: dict, position: int) -> int:
        """The episode's position in the whole split, from TFDS's shard id (enumeration order as fallback)."""
        match = _SHARD_ID.search(_text(raw.get("tfds_id", b"")))
        if match is None or int(match.group(1)) >= len(self.shard_offsets) - 1:
            return position
        return int(self.shard_offsets[int(match.group(1))]) + int(match.group(3))


def _pop_path(tree: dict, path: str) -> None:
    *parents, leaf = path.split("/")
    for part in parents:
        tree = tree.get(part, {})
    tree.pop(leaf, None)


def _set_path(tree: dict, path: str, value: Any) -> None:
    *parents, leaf = path.split("/")
    for part in parents:
        tree = tree[part]
    tree[leaf] = value


def _to_rgb(frames: Any) -> np.ndarray:
    """(T, H, W) or (T, H, W, 1) grayscale -> (T, H, W, 3) by repeating the channel; RGB unchanged."""
    frames = np.asarray(frames)
    if frames.ndim == 3:
        frames = frames[..., None]
    return np.repeat(frames, 3, axis=-1) if frames.ndim == 4 and frames.shape[-1] == 1 else frames


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


# ================================================================ ingest
def ingest_rlds(
    source: str | os.PathLike, store_path: str | os.PathLike, **read_kwargs: Any
) -> TrajectoryStore:
    """Stream an RLDS dataset into an on-disk TrajectoryStore (atomic) and open it memory-mapped.

    read_kwargs go to read_rlds (standardization, split, data_dir, max_episodes, progress, images,
    image_keys, grayscale_to_rgb). A failure (a malformed or unreadable episode) leaves no store behind.
    """
    episodes = read_rlds(source, **read_kwargs)
    with StoreWriter(store_path) as writer:
        for episode in episodes:
            writer.add(episode)
    return TrajectoryStore.load(store_path)

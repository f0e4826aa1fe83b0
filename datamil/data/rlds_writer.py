"""Write episodes as an RLDS (TFDS) dataset: generated sim data and robot recordings share OXE's format.

Layout and reading: see `datamil.data.rlds`.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from datamil.data.schema import STEP_FLAGS, Episode, is_image_key
from datamil.data.tfds_env import load_tf, quiet
from datamil.errors import DataError
from datamil.io import atomic_dir

DATAMIL_META_KEYS = ("episode_id", "dataset", "task", "success")
DESCRIPTION = "RLDS episodes written by datamil (datamil.data.rlds.write_rlds)."
IMAGE_ENCODINGS = ("png", "jpeg")
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


def write_rlds(
    episodes: Iterable[Episode],
    data_dir: str | os.PathLike,
    name: str,
    version: str = "1.0.0",
    image_encoding: str = "png",
) -> Path:
    """Write episodes as an RLDS dataset (split "train"); returns `<data_dir>/<name>/<version>`.

    Episodes are streamed (only one is held at a time). The layout (observation keys, shapes, action
    dim) is taken from the first episode; every episode is validated against it. The version directory
    appears only when complete: a failed write leaves nothing behind.
    """
    tf, tfds = load_tf()
    if image_encoding not in IMAGE_ENCODINGS:
        raise DataError(f"image_encoding {image_encoding!r} is not one of {IMAGE_ENCODINGS}")
    if not _NAME.match(name):
        raise DataError(f"dataset name {name!r} must be snake_case (a-z, 0-9, _), e.g. 'datamil_metaworld'")
    iterator = iter(episodes)
    first = next(iterator, None)
    if first is None:
        raise DataError(f"no episodes to write to {name!r}; check the data source and its filters")
    layout = _layout(first.validate())
    features = _features(tfds, layout, first.actions.shape[1], image_encoding)
    examples = _examples(itertools.chain([first], iterator), layout)
    final = Path(data_dir) / name / version
    with _cleanup_if_new(final.parent), atomic_dir(final) as tmp, quiet(tf, tfds):
        tfds.dataset_builders.store_as_tfds_dataset(
            name=name,
            version=version,
            features=features,
            split_datasets={"train": examples},
            data_dir=os.fspath(tmp),
            description=DESCRIPTION,
            disable_shuffling=True,
        )
        _move_up(tmp / name / version, tmp)
    return final


@contextlib.contextmanager
def _cleanup_if_new(root: Path) -> Iterator[None]:
    """Remove `root` again if this write created it and failed, so no empty dataset folder is left."""
    existed = root.exists()
    try:
        yield
    except BaseException:
        if not existed and root.is_dir() and not any(root.iterdir()):
            root.rmdir()
        raise


def _move_up(version_dir: Path, tmp: Path) -> None:
    """TFDS wrote `<tmp>/<name>/<version>/*` (plus a downloads folder): make `tmp` the version dir itself."""
    leftovers = [p for p in tmp.iterdir()]
    for item in version_dir.iterdir():
        item.rename(tmp / item.name)
    for path in leftovers:
        shutil.rmtree(path, ignore_errors=True)


def _layout(episode: Episode) -> dict[str, tuple[tuple[int, ...], bool]]:
    """Observation key -> (per-step shape, is image), from the first episode."""
    layout = {}
    for key, value in episode.observations.items():
        value = np.asarray(value)
        if is_image_key(key) and (
            value.dtype != np.uint8 or value.ndim != 4 or value.shape[-1] not in (1, 3)
        ):
            raise DataError(
                f"episode {episode.meta.episode_id!r}: image {key!r} must be uint8 (T, H, W, 1 or 3), "
                f"got {value.dtype} {value.shape}"
            )
        layout[key] = (value.shape[1:], is_image_key(key))
    return layout


def _features(tfds: Any, layout: dict, action_dim: int, image_encoding: str) -> Any:
    feat = tfds.features
    observation = {
        key: feat.Image(shape=shape, dtype=np.uint8, encoding_format=image_encoding)
        if image
        else feat.Tensor(shape=shape, dtype=np.float32)
        for key, (shape, image) in layout.items()
    }
    steps = {
        "observation": feat.FeaturesDict(observation),
        "action": feat.Tensor(shape=(action_dim,), dtype=np.float32),
        "reward": feat.Scalar(dtype=np.float32),
        "discount": feat.Scalar(dtype=np.float32),
        **{flag: feat.Scalar(dtype=np.bool_) for flag in STEP_FLAGS},
        "language_instruction": feat.Text(),
    }
    metadata = {
        "episode_id": feat.Text(),
        "dataset": feat.Text(),
        "task": feat.Text(),
        "success": feat.Scalar(np.int32),
    }
    return feat.FeaturesDict({"steps": feat.Dataset(steps), "episode_metadata": feat.FeaturesDict(metadata)})


def _examples(episodes: Iterable[Episode], layout: dict) -> Iterator[tuple[int, dict]]:
    """(key, example) pairs for TFDS; each episode is validated against the first one's layout."""
    action_dim = None
    for index, episode in enumerate(episodes):
        episode.validate(action_dim)
        action_dim = episode.actions.shape[1]
        if _layout(episode) != layout:
            shapes = {k: np.shape(v)[1:] for k, v in episode.observations.items()}
            expected = {k: shape for k, (shape, _) in layout.items()}
            raise DataError(
                f"episode {episode.meta.episode_id!r} of {episode.meta.dataset!r}: observations {shapes} "
                f"differ from the first episode's {expected}; write differently shaped data as separate datasets"
            )
        yield index, _example(episode)


def _example(episode: Episode) -> dict:
    n = len(episode)
    observation = {
        k: np.asarray(v) if is_image_key(k) else np.asarray(v, np.float32)
        for k, v in episode.observations.items()
    }
    steps = {
        "observation": observation,
        "action": np.asarray(episode.actions, np.float32),
        "reward": np.asarray(episode.rewards, np.float32),
        "discount": np.ones(n, np.float32),
        **{flag: np.asarray(getattr(episode, flag), bool) for flag in STEP_FLAGS},
        "language_instruction": [episode.language_instruction] * n,
    }
    meta = episode.meta
    success = -1 if meta.success is None else int(meta.success)
    metadata = {"episode_id": meta.episode_id, "dataset": meta.dataset, "task": meta.task, "success": success}
    return {"steps": steps, "episode_metadata": metadata}

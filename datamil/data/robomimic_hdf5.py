"""Read robomimic hdf5 datasets with h5py (robomimic itself imports torchvision, which does not load here).

Layout: `data/demo_N/{obs/<key>, actions, rewards, dones}`, optional `mask/<filter_key>` arrays of
demo names, and `data.attrs["env_args"]` (JSON) naming the environment.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from datamil.data.schema import OBS_STATE, Episode, EpisodeMeta
from datamil.errors import DataError


def _demo_order(name: str) -> tuple[int, str]:
    """demo_2 before demo_10: robomimic numbers demos without zero padding."""
    match = re.search(r"(\d+)$", name)
    return (int(match.group(1)) if match else -1, name)


def _open(path: str | Path):
    import h5py

    path = Path(path)
    if not path.is_file():
        raise DataError(f"robomimic file {path} does not exist; pass the path of a robomimic .hdf5 dataset")
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise DataError(f"{path} is not a readable hdf5 file ({e}); pass a robomimic .hdf5 dataset") from None
    if "data" not in f:
        f.close()
        raise DataError(f"{path} has no 'data' group, so it is not a robomimic dataset")
    return f


def demo_names(path: str | Path, filter_key: str | None = None) -> list[str]:
    """Demo names in order, restricted to `mask/<filter_key>` when given (e.g. "train", "valid")."""
    with _open(path) as f:
        if filter_key is None:
            return sorted(f["data"].keys(), key=_demo_order)
        if "mask" not in f or filter_key not in f["mask"]:
            valid = sorted(f["mask"].keys()) if "mask" in f else []
            raise DataError(f"{path} has no filter key {filter_key!r}; valid filter keys: {valid}")
        return sorted(
            (n.decode() if isinstance(n, bytes) else str(n) for n in f["mask"][filter_key][:]),
            key=_demo_order,
        )


def _env_name(f) -> str:
    try:
        return json.loads(f["data"].attrs["env_args"])["env_name"]
    except (KeyError, ValueError, TypeError):
        return ""


def read_robomimic(
    path: str | Path,
    state_keys: Sequence[str],
    image_keys: dict[str, str] | None = None,
    filter_key: str | None = None,
    dataset_name: str | None = None,
) -> Iterator[Episode]:
    """Stream demos as Episodes: `state_keys` are concatenated (in order) into the state vector, and
    `image_keys` maps robomimic obs keys to our image keys, e.g. {"agentview_image": "image_primary"}.
    """
    path = Path(path)
    names = demo_names(path, filter_key)
    image_keys = image_keys or {}
    with _open(path) as f:
        dataset = dataset_name or path.stem
        task = _env_name(f)
        for name in names:
            if name not in f["data"]:
                raise DataError(f"{path}: filter key {filter_key!r} names {name!r}, which is not under data/")
            yield _read_demo(
                f["data"][name], name, state_keys, image_keys, EpisodeMeta(f"{dataset}/{name}", dataset, task)
            )


def _read_demo(
    group, name: str, state_keys: Sequence[str], image_keys: dict[str, str], meta: EpisodeMeta
) -> Episode:
    for required in ("actions", "obs"):
        if required not in group:
            raise DataError(f"demo {name!r} has no {required!r}; robomimic demos need obs/ and actions")
    available = sorted(group["obs"].keys())
    missing = [k for k in (*state_keys, *image_keys) if k not in group["obs"]]
    if missing:
        raise DataError(f"demo {name!r} has no obs key(s) {missing}; available obs keys: {available}")
    obs: dict[str, np.ndarray] = {}
    if state_keys:
        parts = [
            group["obs"][k][()].astype(np.float32).reshape(len(group["actions"]), -1) for k in state_keys
        ]
        obs[OBS_STATE] = np.concatenate(parts, axis=1)
    for src, dst in image_keys.items():
        obs[dst] = group["obs"][src][()].astype(np.uint8)
    actions = group["actions"][()].astype(np.float32)
    rewards = group["rewards"][()].astype(np.float32) if "rewards" in group else None
    dones = group["dones"][()].astype(bool) if "dones" in group else None
    success = bool(dones[-1]) if dones is not None and len(dones) else None
    meta = EpisodeMeta(meta.episode_id, meta.dataset, meta.task, success)
    return Episode(obs, actions, meta, rewards=rewards, is_terminal=dones).validate()

"""Write RLDS datasets in a layout of one's choosing, with TFDS itself (no datamil reader conventions).

`write_rlds` writes datamil's own layout, which reads back as is. A prior that must exercise the mapping
of foreign layouts (OXE-style nested observations, dict or 7-d actions) is written here instead: the
benchmarks' generated cross-embodiment priors and the tests' OXE fixtures share these helpers, so both
read exactly what an Open X-Embodiment dataset would give the reader.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np


def tfds_module() -> Any:
    """TFDS as datamil loads it (tfds_env: quiet, with its temp-dir leak stopped), progress bars off."""
    from datamil.data.tfds_env import load_tf

    _, tfds = load_tf()
    tfds.display_progress_bar(False)
    return tfds


def write_raw(
    data_dir: str | os.PathLike, name: str, features: Any, examples: Sequence[dict], version: str = "0.1.0"
) -> Path:
    """Write raw RLDS examples (split "train", in order); returns the version directory."""
    builder = tfds_module().dataset_builders.store_as_tfds_dataset(
        name=name,
        version=version,
        features=features,
        data_dir=os.fspath(data_dir),
        split_datasets={"train": list(enumerate(examples))},
        disable_shuffling=True,
    )
    return Path(builder.data_dir)


def tensor(*shape: int, dtype: Any = np.float32) -> Any:
    return tfds_module().features.Tensor(shape=shape, dtype=dtype)


def step_flags() -> dict:
    """The RLDS per-step flags and reward every OXE dataset carries."""
    f = tfds_module().features
    return {
        "is_first": f.Scalar(np.bool_),
        "is_last": f.Scalar(np.bool_),
        "is_terminal": f.Scalar(np.bool_),
        "reward": f.Scalar(np.float32),
    }


def flag_values(t: int) -> dict:
    """Values of `step_flags` for one episode of t steps that ends in its goal (reward 1 on the last)."""
    return {
        "is_first": np.arange(t) == 0,
        "is_last": np.arange(t) == t - 1,
        "is_terminal": np.arange(t) == t - 1,
        "reward": (np.arange(t) == t - 1).astype(np.float32),
    }


def state_action_features(state_dim: int, action: int | Mapping[str, int]) -> Any:
    """An OXE-style step: `observation/state` (state_dim,) and an action that is either one flat vector
    (`action`: int width) or a dict of named vectors ({"world_vector": 3, "gripper": 1})."""
    f = tfds_module().features
    if isinstance(action, int):
        action_feature = tensor(action)
    else:
        action_feature = f.FeaturesDict({key: tensor(width) for key, width in action.items()})
    steps = {
        "observation": f.FeaturesDict({"state": tensor(state_dim)}),
        "action": action_feature,
        **step_flags(),
    }
    return f.FeaturesDict({"steps": f.Dataset(steps)})


def state_action_example(state: np.ndarray, action: np.ndarray | Mapping[str, np.ndarray]) -> dict:
    """One episode for `state_action_features`: state (T, D_s), action (T, D_a) or {key: (T, d)}."""
    return {
        "steps": {"observation": {"state": state}, "action": action, **flag_values(len(state))},
    }

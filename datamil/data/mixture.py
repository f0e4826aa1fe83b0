"""Mixture priors: several RLDS datasets, each read its own way, scored as one prior.

`data.prior` is either one dataset (a path or name; read as before, ids unchanged) or a list of entries:

    prior:
      - {path: /data/bridge/0.1.0, max_episodes: 500, robot: widowx}
      - {path: /data/taco_play/0.1.0, standardization: taco_play, weight: 2.0, robot: franka}

Each entry's dataset is converted into its own cached store (as a single prior is), then the entries are
streamed into one cached mixture store in one layout: the observation keys every entry has, each camera at
the target's size (or the first entry's), the state only when every dataset has one of the same size (else it
is dropped for the run, with a one-line note). Episode ids become `<label>/<index>` (index: the episode's
position in that entry's store), unique across entries and naming their source; each episode's `dataset`
is its entry's label, so normalization statistics and the selection report go by entry.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from datamil.data.oxe_registry import plain
from datamil.data.schema import OBS_STATE, Episode, EpisodeMeta, is_image_key
from datamil.data.store import OBS_PREFIX, StoreWriter, TrajectoryStore
from datamil.errors import DataError

logger = logging.getLogger(__name__)
ENTRY_FIELDS = (
    "path",
    "name",
    "label",
    "standardization",
    "mapping",
    "max_episodes",
    "weight",
    "robot",
    "image_keys",
)
STATE = OBS_PREFIX + OBS_STATE


@dataclass(frozen=True)
class PriorEntry:
    """One dataset of a prior and how to read it.

    weight: multiplies the per-step sampling probability of this dataset's selected steps inside the prior
        share of a co-training batch (1 everywhere = uniform over the selected steps). It never enters the
        selection: every trajectory is scored the same way whatever its weight.
    """

    source: str  # a dataset directory, or a name under data.data_dir
    label: str | None = None  # None = the dataset's builder name
    standardization: str | None = None  # OXE registry row; None = the dataset's own
    mapping: dict | None = None  # data.mapping fields for this dataset (docs/oxe.md)
    max_episodes: int | None = None  # read only its first N episodes
    weight: float = 1.0
    robot: str = "unknown"  # shown in the selection report's composition by robot
    image_keys: dict[str, str] | None = None  # {raw camera: our image key}; None = the registry's cameras


def prior_entries(prior: Any) -> list[PriorEntry]:
    """The entries of a `data.prior` list; every problem is one line naming the entry and the fix."""
    entries = []
    for i, raw in enumerate(plain(prior)):
        raw = {"path": raw} if isinstance(raw, str) else raw
        if not isinstance(raw, Mapping):
            raise DataError(f"data.prior[{i}] is {raw!r}; give a path or {{path: ..., standardization: ...}}")
        unknown = sorted(set(raw) - set(ENTRY_FIELDS))
        if unknown:
            raise DataError(f"data.prior[{i}] has unknown field(s) {unknown}; valid: {list(ENTRY_FIELDS)}")
        source = raw.get("path") or raw.get("name")
        if not source or ("path" in raw and "name" in raw):
            raise DataError(
                f"data.prior[{i}] needs exactly one of path (a directory) or name (under data_dir)"
            )
        weight = float(raw.get("weight", 1.0))
        if not weight > 0:
            raise DataError(f"data.prior[{i}] has weight {weight}; sampling weights must be positive")
        label = raw.get("label")
        if label is not None and ("/" in str(label) or not str(label)):
            raise DataError(f"data.prior[{i}] has label {label!r}; a label is a non-empty name without '/'")
        entries.append(
            PriorEntry(
                str(source),
                None if label is None else str(label),
                raw.get("standardization"),
                raw.get("mapping"),
                raw.get("max_episodes"),
                weight,
                str(raw.get("robot", "unknown")),
                raw.get("image_keys"),
            )
        )
    if not entries:
        raise DataError("data.prior is an empty list; give at least one dataset")
    return entries


def check_labels(labels: Sequence[str]) -> None:
    """Labels name the datasets in episode ids and statistics, so they must differ."""
    seen = [x for i, x in enumerate(labels) if x in labels[:i]]
    if seen:
        raise DataError(
            f"two prior datasets are labelled {seen[0]!r}; give one of them another `label:` in data.prior"
        )


@dataclass
class Layout:
    """The one layout a mixture is stored in: kept observation arrays and each camera's (H, W)."""

    keep: set[str]
    sizes: dict[str, tuple[int, int]] = field(default_factory=dict)
    note: str | None = None  # why the state was dropped, if it was


def common_layout(stores: Mapping[str, TrajectoryStore], target: TrajectoryStore | None = None) -> Layout:
    """Observation keys every prior dataset has; cameras at the target's size (else the first dataset's);
    the state only when every dataset (and the target, when it has one) has one of the same size."""
    first = next(iter(stores.values()))
    dims = {label: s.action_dim for label, s in stores.items()}
    if len(set(dims.values())) > 1:
        raise DataError(
            f"the prior datasets have different action sizes {dims}; mix datasets of one action convention "
            "(docs/oxe.md: joint and native actions cannot be mixed with end-effector deltas)"
        )
    keys = set.intersection(*({k for k in s.arrays if k.startswith(OBS_PREFIX)} for s in stores.values()))
    states = {label: _state_size(s) for label, s in stores.items()}
    if target is not None and STATE in target.arrays:
        states["target"] = _state_size(target)
    note = None
    if len(set(states.values())) > 1:
        keys.discard(STATE)
        sizes = ", ".join(f"{k}: {'none' if v is None else v}" for k, v in states.items())
        note = (
            f"state sizes differ ({sizes}); states are dropped for this run and an image-only policy "
            "(policy=bc_image_only) carries the selection; to keep them map every dataset to one proprio "
            "layout (per-entry mapping: {state_keys: [...]}, data.target_mapping)"
        )
    if not keys:
        raise DataError(
            "the prior datasets share no observation (no common camera or state); read a common camera "
            "with per-entry image_keys"
        )
    sizes = {}
    for name in sorted(k for k in keys if is_image_key(k[len(OBS_PREFIX) :])):
        like = target if target is not None and name in target.arrays else first
        sizes[name] = tuple(int(n) for n in like.arrays[name].shape[1:3])
    return Layout(keys, sizes, note)


def _state_size(store: TrajectoryStore) -> int | None:
    return int(store.arrays[STATE].shape[1]) if STATE in store.arrays else None


def write_mixture(stores: Mapping[str, TrajectoryStore], layout: Layout, path: Path) -> TrajectoryStore:
    """Stream every entry's episodes, relabelled and in `layout`, into one store at `path` (atomic)."""
    from datamil.policies.vision import resize_frames

    with StoreWriter(path) as writer:
        for label, store in stores.items():
            for index in range(store.n_episodes):
                episode = store.episode(index)
                obs = {}
                for key, value in episode.observations.items():
                    name = OBS_PREFIX + key
                    if name not in layout.keep:
                        continue
                    size = layout.sizes.get(name)
                    resize = size is not None and tuple(value.shape[1:3]) != size
                    obs[key] = resize_frames(value, size) if resize else np.asarray(value)
                meta = EpisodeMeta(f"{label}/{index}", label, episode.meta.task, episode.meta.success)
                writer.add(
                    Episode(
                        obs,
                        np.asarray(episode.actions),
                        meta,
                        np.asarray(episode.rewards),
                        np.asarray(episode.is_first),
                        np.asarray(episode.is_last),
                        np.asarray(episode.is_terminal),
                        episode.language_instruction,
                    )
                )
    (path / "layout.json").write_text(json.dumps({"keep": sorted(layout.keep), "sizes": layout.sizes}))
    return TrajectoryStore.load(path)


def drop_state(store: TrajectoryStore) -> TrajectoryStore:
    """`store` without its state array (the other arrays shared, not copied)."""
    if STATE not in store.arrays:
        return store
    arrays = {k: v for k, v in store.arrays.items() if k != STATE}
    return TrajectoryStore(arrays, store.offsets, store.episodes)

"""Open X-Embodiment standardization: one registered entry per dataset maps its raw RLDS steps to our schema.

Why: every OXE dataset names its observations and encodes its actions differently. Selecting prior data
across robots only makes sense once all of them speak one action language, so each dataset gets an entry
that says, from its published feature spec, where state, cameras and language live and how its action
converts. The entries are rows of data (oxe_datasets.yaml, read by oxe_registry); the action vocabulary is
in oxe_actions; docs/oxe.md is the user's guide, including mapping an unknown dataset by config.

The common action convention (the one the OXE standardization uses), shape (T, 7):

    [dx, dy, dz, droll, dpitch, dyaw, gripper]

- dx..dyaw: the dataset's commanded end-effector translation and rotation deltas, in its own frame and
  units (no rescaling here; per-dataset normalization statistics in the store handle scale).
- gripper: absolute, in [0, 1], 1 = open, 0 = closed.

Entries whose action cannot be written that way keep their own layout and say so in `action_convention`
(absolute_eef, joint_position, joint_delta, joint_velocity, native; our own MetaWorld data is native).
Observations become `state` (concatenated proprio slices, absent when a dataset has none) and `image_*`.

Raw steps are the episode's steps batched over time as numpy: a nested dict, every leaf of shape (T, ...).
Keys are addressed by "/"-joined paths, e.g. "observation/robot_obs" or "action/world_vector".
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from datamil.data import oxe_registry
from datamil.data.oxe_actions import (  # noqa: F401  (gripper conversions re-exported)
    DELTA_EEF,
    EEF_ACTION_DIM,
    EEF_TRANSFORMS,
    convert_action,
    gripper_from_continuous,
    gripper_from_relative,
    gripper_from_signed,
    lookup,
)
from datamil.data.oxe_registry import DatasetRow
from datamil.data.schema import OBS_STATE, is_image_key
from datamil.errors import DataError, UnknownNameError
from datamil.registry import Registry

EEF_DELTA = DELTA_EEF  # the common 7-d convention above
NATIVE = "native"  # the dataset's own action space, kept as is
IMAGE_PRIMARY = "image_primary"
IMAGE_WRIST = "image_wrist"
COMMON_ACTION_DIM = EEF_ACTION_DIM
MAP_BY_CONFIG = (
    "map it by config: data.mapping={action_keys: [...], action_transform: delta_eef, gripper: ..., "
    "state_keys: [...], cameras: {<raw camera>: image_primary}, language_key: ...} (docs/oxe.md), or set "
    "data.standardization=<a registered dataset with the same layout>"
)

Steps = Mapping[str, Any]


# ---------------------------------------------------------------- the entry type
@dataclass(frozen=True)
class StandardSteps:
    """One episode in the common schema: observations key -> (T, ...), actions (T, A), language."""

    observations: dict[str, np.ndarray]
    actions: np.ndarray
    language: str


@dataclass(frozen=True)
class Standardization:
    """How one dataset's raw steps map to the common schema.

    required: raw path -> per-step shape (None = any size on that axis, None as a whole = any shape),
        checked before conversion so a malformed episode fails with the key it lacks.
    state: (raw path, start, stop) slices of the flattened values, concatenated into `state` (empty: none).
    images: common image key -> raw path. `None` passes every raw observation key through unchanged (our
        own layout, already `state` + `image_*`).
    language: raw path of the per-step instruction (the first step's is used).
    image_present: raw image path -> episode-level bool path that says whether the episode has that
        camera at all (bridge's `has_image_i`: frames of a missing camera are blank, not absent).
    action: raw steps -> (T, A) float actions in `action_convention`.
    action_dim: A after conversion (None: whatever the data has).
    success: raw episode-level features (everything but steps) -> success flag or None.
    alternatives: other layouts of the same data accepted under this name, chosen by the keys present.
    """

    name: str
    required: Mapping[str, tuple[int | None, ...] | None]
    action: Callable[[Steps], np.ndarray]
    state: tuple[tuple[str, int | None, int | None], ...] = ()
    images: Mapping[str, str] | None = field(default_factory=dict)
    language: str | None = None
    action_convention: str = EEF_DELTA
    action_dim: int | None = COMMON_ACTION_DIM
    success: Callable[[Mapping[str, Any]], bool | None] | None = None
    image_present: Mapping[str, str] = field(default_factory=dict)
    alternatives: tuple[Standardization, ...] = ()

    def image_paths(self, raw_image_paths: list[str]) -> list[str]:
        """Raw image paths this entry reads: the rest need not be decoded."""
        if self.images is None:
            return [
                p for p in raw_image_paths if p.startswith("observation/") and is_image_key(p.split("/")[-1])
            ]
        for layout in (self, *self.alternatives):
            if set(layout.images.values()) <= set(raw_image_paths):  # type: ignore[union-attr]
                return list(layout.images.values())  # type: ignore[union-attr]
        return list(self.images.values())

    def without_images(self) -> Standardization:
        """This entry with no cameras, for reading state and actions only."""
        if self.images is None:
            return self
        required = {p: s for p, s in self.required.items() if p not in set(self.images.values())}
        alternatives = tuple(a.without_images() for a in self.alternatives)
        return replace(self, required=required, images={}, alternatives=alternatives)

    def with_image_keys(self, raw_to_ours: Mapping[str, str]) -> Standardization:
        """This entry reading other cameras: raw observation key (or "/"-path) -> our image key.

        E.g. {"image_1": "image_primary"} reads bridge's second view instead of the registered image_0.
        """
        if self.images is None:
            raise DataError(
                f"the {self.name!r} layout already names its cameras image_*; choose among them with "
                "policy.image_keys instead of remapping them"
            )
        images: dict[str, str] = {}
        for raw, ours in raw_to_ours.items():
            path = oxe_registry.camera_path(raw)
            if not is_image_key(ours):
                raise DataError(f"camera {raw!r} is mapped to {ours!r}; image keys must start with 'image'")
            if ours in images:
                raise DataError(f"two cameras ({images[ours]!r}, {path!r}) are mapped to {ours!r}")
            images[ours] = path
        old = set(self.images.values())
        required = {p: s for p, s in self.required.items() if p not in old}
        required.update({p: (None, None, 3) for p in images.values()})
        alternatives = tuple(a.with_image_keys(raw_to_ours) for a in self.alternatives)
        return replace(self, required=required, images=images, alternatives=alternatives)

    def layout_for(self, steps: Steps) -> Standardization:
        """This entry, or the first alternative whose keys the steps all have (else this one, to report)."""
        for layout in (self, *self.alternatives):
            if all(_has(steps, path) for path in layout.required):
                return layout
        return self

    def check(self, steps: Steps, where: str) -> None:
        """Raise DataError unless every required raw key is there with its published per-step shape."""
        for path, shape in self.required.items():
            try:
                value = np.asarray(lookup(steps, path))
            except KeyError:
                raise DataError(
                    f"{where}: raw key {path!r} is missing; the {self.name!r} layout reads "
                    f"{sorted(self.required)}, the data has {_paths(steps)}; pass the standardization that "
                    "matches this dataset or map it by config (data.mapping, docs/oxe.md)"
                ) from None
            if shape is not None and not _shape_matches(value.shape[1:], shape):
                if shape == (None, None, 3) and _is_grayscale(value.shape[1:]):
                    raise DataError(
                        f"{where}: camera {path!r} is grayscale {value.shape[1:]}, RGB (H, W, 3) is expected; "
                        "set data.grayscale_to_rgb=true to repeat the channel (or read_rlds(grayscale_to_rgb=True))"
                    )
                raise DataError(
                    f"{where}: raw {path!r} has per-step shape {value.shape[1:]}, the {self.name!r} "
                    f"standardization expects {shape}; pass the standardization that matches this dataset"
                )
            if path.startswith("action") and value.dtype.kind == "f" and not np.all(np.isfinite(value)):
                step = int(np.argmax(~np.isfinite(value.reshape(len(value), -1)).all(axis=1)))
                raise DataError(
                    f"{where}: raw {path!r} is NaN or inf at step {step}; drop or repair the episode"
                )

    def __call__(self, steps: Steps, where: str) -> StandardSteps:
        """Raw batched steps -> StandardSteps; DataError (one line, naming `where`) when malformed."""
        layout = self.layout_for(steps)
        if layout is not self:
            return layout(steps, where)
        self.check(steps, where)
        observations = self._observations(steps)
        if self.state:
            parts = [_flat(lookup(steps, p))[:, a:b] for p, a, b in self.state]
            observations[OBS_STATE] = np.concatenate(parts, axis=1)
        actions = np.asarray(self.action(steps), np.float32)
        language = _first_text(lookup(steps, self.language)) if self.language else ""
        return StandardSteps(observations, actions, language)

    def _observations(self, steps: Steps) -> dict[str, np.ndarray]:
        if self.images is None:
            return {k: np.asarray(v) for k, v in steps.get("observation", {}).items()}
        return {key: np.asarray(lookup(steps, path)) for key, path in self.images.items()}


def _has(tree: Steps, path: str) -> bool:
    try:
        lookup(tree, path)
    except KeyError:
        return False
    return True


def _paths(tree: Any, prefix: str = "") -> list[str]:
    """Every leaf path of a nested dict, for error messages."""
    if not isinstance(tree, Mapping):
        return [prefix]
    return sorted(p for k, v in tree.items() for p in _paths(v, f"{prefix}/{k}" if prefix else str(k)))


def _flat(values: Any) -> np.ndarray:
    values = np.asarray(values, np.float32)
    return values.reshape(len(values), -1)


def _shape_matches(actual: tuple[int, ...], expected: tuple[int | None, ...]) -> bool:
    return len(actual) == len(expected) and all(
        e is None or a == e for a, e in zip(actual, expected, strict=True)
    )


def _is_grayscale(shape: tuple[int, ...]) -> bool:
    """(H, W) or (H, W, 1): a one-channel image."""
    return len(shape) == 2 or (len(shape) == 3 and shape[-1] == 1)


def _first_text(values: Any) -> str:
    """The first non-empty instruction; integer rows are character codes (zero-padded), as in language_table."""
    values = np.asarray(values)
    if values.dtype.kind in "iu" and values.ndim == 2:
        rows = ["".join(chr(int(c)) for c in row if c > 0) for row in values]
        return next((text for text in rows if text), "")
    for value in values.reshape(-1):
        text = value.decode("utf-8") if isinstance(value, bytes) else str(value)
        if text:
            return text
    return ""


STANDARDIZATIONS: Registry[Standardization] = Registry("OXE dataset")


def register(*names: str) -> Callable[[Standardization], Standardization]:
    """Register one entry under one or more dataset (builder) names."""

    def decorator(entry: Standardization) -> Standardization:
        for name in names:
            STANDARDIZATIONS.register(name)(entry)
        return entry

    return decorator


def get_standardization(name: str | Standardization) -> Standardization:
    """The entry for a dataset name (an entry passes through); UnknownNameError lists the registered names."""
    if isinstance(name, Standardization):
        return name
    return STANDARDIZATIONS.get(name)


# ---------------------------------------------------------------- rows -> entries
def entry_from_row(row: DatasetRow, alternatives: tuple[DatasetRow, ...] = ()) -> Standardization:
    """The registry entry that reads `row`'s layout (and, by their keys, the alternative layouts)."""
    steps = oxe_registry.flatten(row.spec)
    required: dict[str, tuple[int | None, ...] | None] = {}
    for path, _, _ in (*row.action.keys, *row.state):  # actions first: a wrong layout fails on them
        required[path] = steps[path].shape if path in steps else None
    images = row.camera_paths()
    required.update({path: (None, None, 3) for path in images.values()})
    if row.language_key:
        language = steps.get(row.language_key)
        required[row.language_key] = language.shape if language else None
    width = oxe_registry.keys_width(row.action_keys, steps)
    success = None
    if row.success_key:
        success = functools.partial(_read_success, row.success_key, row.success_known_key)
    present = {oxe_registry.camera_path(raw): flag for raw, flag in row.camera_present.items()}
    alternates = tuple(entry_from_row(a) for a in alternatives)
    for alternate in alternates:
        present.update(alternate.image_present)
    return Standardization(
        name=row.name,
        required=required,
        action=functools.partial(convert_action, row.action),
        state=row.state,
        images=images,
        language=row.language_key,
        action_convention=row.action_transform,
        action_dim=row.action.output_width(width) if width is not None else _eef_dim(row),
        success=success,
        image_present=present,
        alternatives=alternates,
    )


def _eef_dim(row: DatasetRow) -> int | None:
    """7 for end-effector transforms, whose width does not depend on the data; else unknown."""
    return COMMON_ACTION_DIM if row.action_transform in EEF_TRANSFORMS else None


def _read_success(key: str, known_key: str | None, episode: Mapping[str, Any]) -> bool | None:
    """The episode's success flag; None when it is missing or `known_key` says it was not labelled."""
    try:
        if known_key is not None and not bool(np.asarray(lookup(episode, known_key))):
            return None
        return bool(np.asarray(lookup(episode, key)))
    except KeyError:
        return None


def _register_table() -> None:
    rows = oxe_registry.table_rows()
    for row in rows.values():
        entry = entry_from_row(row, tuple(rows[name] for name in row.alternatives))
        register(row.name, *row.aliases)(entry)


def configured_standardization(
    dataset: str, features: Any = None, name: str | None = None, mapping: Mapping[str, Any] | None = None
) -> Standardization:
    """The entry to read `dataset` with, from config: `name` (data.standardization) and `mapping`.

    Without a mapping: the named entry, else the dataset's own; an unknown dataset fails with one line
    saying how to map it by config. With a mapping: its fields replace those of the named (or the
    dataset's own) table row, or describe the dataset from scratch. `features` (the dataset's TFDS
    FeaturesDict) lets a wrong key fail here, listing the dataset's real keys.
    """
    if not mapping:
        if name is None and dataset not in STANDARDIZATIONS:
            raise UnknownNameError("OXE dataset", dataset, STANDARDIZATIONS.names(), MAP_BY_CONFIG)
        return get_standardization(name or dataset)
    rows = oxe_registry.table_rows()
    by_name = {alias: row for row in rows.values() for alias in (row.name, *row.aliases)}
    base_name = name or (dataset if dataset in by_name else None)
    if base_name is not None and base_name not in by_name:
        raise UnknownNameError("OXE table row", base_name, sorted(by_name), "data.mapping extends table rows")
    base = by_name.get(base_name) if base_name else None
    if base is not None and features is not None:  # the layout this copy has (bridge: two)
        base = oxe_registry.matching_layout(base, [rows[n] for n in base.alternatives], features)
    row = oxe_registry.apply_mapping(base, mapping, dataset)
    if features is not None:
        row = oxe_registry.with_features(row, features)
    return entry_from_row(row)


_register_table()


# ---------------------------------------------------------------- our own layout (write_rlds)
# every observation key (state (D,), image_* (H, W, C)) passes through; the action stays in its native space.
def _native_action(steps: Steps) -> np.ndarray:
    return np.asarray(steps["action"], np.float32)


DATAMIL = "datamil"

register(DATAMIL)(
    Standardization(
        name=DATAMIL,
        required={"action": (None,), "language_instruction": ()},
        action=_native_action,
        images=None,
        language="language_instruction",
        action_convention=NATIVE,
        action_dim=None,
    )
)

# MetaWorld (datamil.sim_tasks): 39-d state, 4-d action [dx, dy, dz, gripper effort], native.
register("datamil_metaworld")(
    Standardization(
        name="datamil_metaworld",
        required={"action": (4,), "observation/state": (None,), "language_instruction": ()},
        action=_native_action,
        images=None,
        language="language_instruction",
        action_convention=NATIVE,
        action_dim=4,
    )
)

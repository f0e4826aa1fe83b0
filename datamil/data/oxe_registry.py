"""Dataset rows: how to read one RLDS dataset, as data (the shipped table, or a user's config mapping).

Why rows and not code: a dataset's layout is facts (its feature spec, which keys hold the state, the
cameras, the action and how that action is encoded). Writing them as a table row keeps all ~60 Open
X-Embodiment datasets reviewable side by side, lets the tests build each dataset's published spec, and lets
a user describe an unknown dataset in config with the same fields. datamil.data.oxe turns rows into
registry entries.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from datamil.data.oxe_actions import ActionSpec
from datamil.errors import DataError

TABLE = Path(__file__).with_name("oxe_datasets.yaml")
MAPPING_FIELDS = (
    "cameras",
    "state_keys",
    "action_keys",
    "action_transform",
    "rotation",
    "gripper",
    "gripper_scale",
    "language_key",
    "success_key",
    "success_known_key",
)
_LEAF = re.compile(r"^(?P<kind>[a-z0-9_]+)(?:\[(?P<shape>[0-9, ]*)\])?$")
_KEY = re.compile(r"^(?P<path>.+?)(?:\[(?P<start>-?\d*)(?P<colon>:?)(?P<stop>-?\d*)\])?$")
_DTYPES = ("bool", "uint8", "uint16", "int32", "int64", "float32", "float64")
_TUPLE_FIELDS = ("action_keys", "state_keys", "alternatives", "aliases")


@dataclass(frozen=True)
class Feature:
    """One leaf of a feature spec: kind is tensor, image or text; shape is per step (images: H, W, C)."""

    kind: str
    dtype: str
    shape: tuple[int | None, ...] = ()  # None: a size that varies

    @property
    def size(self) -> int | None:
        """Values per step once flattened (None when a dimension varies)."""
        return None if None in self.shape else int(np.prod(self.shape, dtype=int))


Spec = dict[str, Any]  # nested: key -> Feature or Spec, as in the dataset's TFDS FeaturesDict


@dataclass(frozen=True)
class DatasetRow:
    """One dataset's layout; see the header of oxe_datasets.yaml (and docs/oxe.md) for every field."""

    name: str
    action_keys: tuple[str, ...]
    action_transform: str
    spec: Spec = field(default_factory=dict)
    episode: Spec = field(default_factory=dict)
    cameras: Mapping[str, str] = field(default_factory=dict)
    state_keys: tuple[str, ...] = ()
    rotation: str = "euler"
    gripper: str = "none"
    gripper_scale: float = 1.0
    language_key: str | None = None
    success_key: str | None = None
    success_known_key: str | None = None
    camera_present: Mapping[str, str] = field(default_factory=dict)
    alternatives: tuple[str, ...] = ()
    aliases: tuple[str, ...] = ()
    spec_source: str = "published"
    note: str = ""

    @property
    def action(self) -> ActionSpec:
        keys = tuple(parse_key(k) for k in self.action_keys)
        return ActionSpec(keys, self.action_transform, self.rotation, self.gripper, float(self.gripper_scale))

    @property
    def state(self) -> tuple[tuple[str, int | None, int | None], ...]:
        return tuple(parse_key(k) for k in self.state_keys)

    def camera_paths(self) -> dict[str, str]:
        """Our image key -> raw step path."""
        return {ours: camera_path(raw) for raw, ours in self.cameras.items()}


# ---------------------------------------------------------------- parsing
def camera_path(raw: str) -> str:
    """A camera given as an observation key ("image_1") or a "/"-path in the steps."""
    return raw if "/" in raw else f"observation/{raw}"


def parse_key(text: str) -> tuple[str, int | None, int | None]:
    """ "obs/state[6:14]" -> ("obs/state", 6, 14); "action[6]" -> ("action", 6, 7); "action" -> (.., None, None)."""
    match = _KEY.match(str(text).strip())
    if match is None or not match["path"]:
        raise DataError(f"bad key {text!r}; write a step path, optionally sliced: path, path[i] or path[a:b]")
    if match["start"] is None:
        return match["path"], None, None
    start = int(match["start"]) if match["start"] else None
    if not match["colon"]:
        if start is None:
            raise DataError(f"bad key {text!r}; an index needs a number, e.g. {match['path']}[0]")
        return match["path"], start, (start + 1) or None
    return match["path"], start, int(match["stop"]) if match["stop"] else None


def parse_leaf(text: str, where: str) -> Feature:
    """ "float32[7]" / "float32" / "string" / "image[H,W,C]" / "image_uint16[H,W,1]" -> Feature."""
    match = _LEAF.match(str(text).replace(" ", ""))
    kind = match["kind"] if match else ""
    shape = tuple(int(s) for s in match["shape"].split(",") if s) if match and match["shape"] else ()
    if kind == "string":
        return Feature("text", "string", shape)
    if kind == "image" or kind.startswith("image_"):
        dtype = kind.removeprefix("image").removeprefix("_") or "uint8"
        if dtype in _DTYPES and len(shape) == 3:
            return Feature("image", dtype, shape)
    elif kind in _DTYPES:
        return Feature("tensor", kind, shape)
    raise DataError(f"{where}: bad feature {text!r}; write dtype, dtype[shape], string or image[H,W,C]")


def parse_spec(tree: Mapping[str, Any], where: str) -> Spec:
    return {
        key: parse_spec(value, f"{where}/{key}") if isinstance(value, Mapping) else parse_leaf(value, where)
        for key, value in tree.items()
    }


def flatten(spec: Spec, prefix: str = "") -> dict[str, Feature]:
    """Nested spec -> {"/"-joined path: Feature}."""
    flat: dict[str, Feature] = {}
    for key, value in spec.items():
        path = f"{prefix}/{key}" if prefix else key
        flat.update(flatten(value, path) if isinstance(value, dict) else {path: value})
    return flat


def plain(value: Any) -> Any:
    """Config values (OmegaConf containers included) as plain dicts, lists and scalars."""
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, str):
        return [plain(v) for v in value]
    return value


def row_from_data(name: str, data: Mapping[str, Any]) -> DatasetRow:
    """A table row (or a complete config mapping) -> DatasetRow; DataError names the bad field."""
    data = plain(data)
    unknown = sorted(set(data) - set(DatasetRow.__dataclass_fields__) - {"name"})
    if unknown:
        valid = sorted(DatasetRow.__dataclass_fields__)
        raise DataError(f"dataset {name!r}: unknown field(s) {unknown}; valid: {valid}")
    for needed in ("action_keys", "action_transform"):
        if not data.get(needed):
            raise DataError(f"dataset {name!r} needs {needed}; see docs/oxe.md for the fields of a mapping")
    fields = {k: _tuple(v) if k in _TUPLE_FIELDS else v for k, v in data.items() if k != "name"}
    fields["spec"] = parse_spec(fields.get("spec") or {}, name)
    fields["episode"] = parse_spec(fields.get("episode") or {}, name)
    fields["cameras"] = dict(fields.get("cameras") or {})
    row = DatasetRow(name=name, **fields)
    row.action.validate()
    return row


def _tuple(value: Any) -> tuple:
    """A list field: null -> (), a single key -> (key,)."""
    return () if value is None else (value,) if isinstance(value, str) else tuple(value)


@cache
def table_rows() -> dict[str, DatasetRow]:
    """Every row of the shipped table, checked against its own spec."""
    import yaml

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the C loader, when built, reads it 10x faster
    table = yaml.load(TABLE.read_text(), Loader=loader)
    rows = {name: row_from_data(name, data) for name, data in table.items()}
    for row in rows.values():
        check_keys(row, flatten(row.spec), flatten(row.episode), f"registry row {row.name!r}")
        missing = [name for name in row.alternatives if name not in rows]
        if missing:
            raise DataError(f"registry row {row.name!r} names unknown alternatives {missing}")
    return rows


# ---------------------------------------------------------------- config mappings
def apply_mapping(base: DatasetRow | None, mapping: Mapping[str, Any], dataset: str) -> DatasetRow:
    """`base` with the mapping's fields replacing its own (no base: the mapping must describe the action).

    A mapping describes one layout, so the result reads no alternative layouts.
    """
    mapping = plain(mapping)
    unknown = sorted(set(mapping) - set(MAPPING_FIELDS))
    if unknown:
        raise DataError(f"data.mapping has unknown field(s) {unknown}; valid: {list(MAPPING_FIELDS)}")
    if base is None:
        return row_from_data(dataset, mapping)
    fields = {k: _tuple(v) if k in _TUPLE_FIELDS else v for k, v in mapping.items()}
    if "cameras" in fields:
        fields["cameras"] = dict(fields["cameras"] or {})
    row = replace(base, name=dataset, alternatives=(), **fields)
    row.action.validate()
    return row


def matching_layout(row: DatasetRow, alternatives: Sequence[DatasetRow], features: Any) -> DatasetRow:
    """The first of `row` and its alternatives whose action keys the dataset's features have (else `row`)."""
    steps = flatten(spec_from_features(features)[0])
    for layout in (row, *alternatives):
        if all(parse_key(key)[0] in steps for key in layout.action_keys):
            return layout
    return row


def with_features(row: DatasetRow, features: Any) -> DatasetRow:
    """`row` with the spec of the dataset actually read (a TFDS FeaturesDict), checked against it."""
    steps, episode = spec_from_features(features)
    row = replace(row, spec=steps, episode=episode)
    check_keys(row, flatten(steps), flatten(episode), f"dataset {row.name!r}")
    return row


def spec_from_features(features: Any) -> tuple[Spec, Spec]:
    """A TFDS FeaturesDict of RLDS episodes -> (per-step spec, episode-level spec)."""
    episode = {k: _spec_of(features[k]) for k in features.keys() if k != "steps"}
    return _spec_of(features["steps"].feature), episode


def _spec_of(feature: Any) -> Any:
    if isinstance(feature, Mapping) or type(feature).__name__ == "FeaturesDict":
        return {key: _spec_of(feature[key]) for key in feature.keys()}
    dtype = np.dtype(getattr(feature, "np_dtype", None) or np.float32).name
    kind = type(feature).__name__
    shape = tuple(None if s is None else int(s) for s in (getattr(feature, "shape", ()) or ()))
    if kind == "Image":
        return Feature("image", dtype, shape)
    if kind == "Text" or dtype in ("object", "str", "bytes"):
        return Feature("text", "string", shape)
    return Feature("tensor", dtype, shape)


# ---------------------------------------------------------------- checks against a spec
def check_keys(row: DatasetRow, steps: dict[str, Feature], episode: dict[str, Feature], where: str) -> None:
    """DataError (one line, listing the real keys) for any key the row reads that the spec lacks."""
    for key in (*row.state_keys, *row.action_keys, *(k for k in [row.language_key] if k)):
        _feature(parse_key(key)[0], steps, where, "step")
    cameras = {p: f for p, f in steps.items() if f.kind == "image"}
    for raw in row.cameras:
        if camera_path(raw) not in cameras:
            names = sorted(p.removeprefix("observation/") for p in cameras)
            raise DataError(f"{where} has no camera {raw!r}; its cameras are {names}")
    for key in (row.success_key, row.success_known_key):
        if key:
            _feature(key, episode, where, "episode-level")
    row.action.validate(width=keys_width(row.action_keys, steps))


def _feature(path: str, spec: dict[str, Feature], where: str, level: str) -> Feature:
    if path not in spec:
        raise DataError(f"{where} has no {level} key {path!r}; its {level} keys are {sorted(spec)}")
    return spec[path]


def keys_width(keys: Sequence[str], steps: dict[str, Feature]) -> int | None:
    """Length of the vector the keys concatenate into (None when a key's spec is unknown)."""
    total = 0
    for key in keys:
        path, start, stop = parse_key(key)
        size = steps[path].size if path in steps else None
        if size is None:
            return None
        total += len(range(size)[start:stop])
    return total

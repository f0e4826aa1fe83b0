"""The fixed vocabulary that turns a dataset's raw action vector into our action convention.

Why a vocabulary and not a function per dataset: the ~60 Open X-Embodiment datasets encode their actions in
a handful of ways. Naming those ways lets a registry row, or a user's config, describe a dataset as data:
which keys form the action vector, what that vector means (`transform`), how its rotation is written
(`rotation`) and what its last value says about the gripper (`gripper`).

Common convention (transform `delta_eef`), shape (T, 7): [dx, dy, dz, droll, dpitch, dyaw, gripper], the
gripper absolute in [0, 1] with 1 = open. `absolute_eef` has the same layout for absolute poses. The joint
and `native` transforms keep the raw vector (its last value converted to 1 = open when it is a gripper):
they cannot be mapped onto end-effector deltas without the robot's kinematics, so they are not.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from datamil.errors import DataError
from datamil.registry import Registry

DELTA_EEF = "delta_eef"
ABSOLUTE_EEF = "absolute_eef"
EEF_TRANSFORMS = (DELTA_EEF, ABSOLUTE_EEF)
EEF_ACTION_DIM = 7


def lookup(tree: Mapping[str, Any], path: str) -> Any:
    """The value at a "/"-joined path of a nested dict; KeyError when any part is missing.

    Feature names may themselves contain "/" (bc_z's "future/xyz_residual"): at each level the longest
    name that exists wins.
    """
    node: Any = tree
    parts = path.split("/")
    i = 0
    while i < len(parts):
        if not isinstance(node, Mapping):
            raise KeyError(path)
        for j in range(len(parts), i, -1):
            name = "/".join(parts[i:j])
            if name in node:
                node, i = node[name], j
                break
        else:
            raise KeyError(path)
    return node


# ---------------------------------------------------------------- gripper conventions, (T,) -> (T,) in [0, 1]
def gripper_from_relative(command: np.ndarray, threshold: float = 0.1) -> np.ndarray:
    """Integrate relative commands (+1 close, -1 open, |c| <= threshold keep) into absolute 1 = open.

    Before the first command the gripper is taken to be in the opposite state (a first "close" means it
    was open); with no command at all it stays open.
    """
    command = np.asarray(command, np.float64).reshape(-1)
    target = np.where(command > threshold, 0.0, np.where(command < -threshold, 1.0, np.nan))
    given = ~np.isnan(target)
    if not given.any():
        return np.ones(len(command), np.float32)
    last_given = np.maximum.accumulate(np.where(given, np.arange(len(target)), 0))
    state = target[last_given]
    first = int(np.argmax(given))
    state[:first] = 1.0 - target[first]
    return state.astype(np.float32)


def gripper_from_continuous(
    position: np.ndarray, open_above: float = 0.95, closed_below: float = 0.05
) -> np.ndarray:
    """Binarize a continuous position (1 = open): in-between values take the next definite state.

    A trajectory that ends in between keeps its last raw value for that tail (nothing to look ahead to).
    """
    position = np.asarray(position, np.float64).reshape(-1)
    target = np.where(position > open_above, 1.0, np.where(position < closed_below, 0.0, np.nan))
    n = len(target)
    given = ~np.isnan(target)
    # backward fill: index of the next given value at or after t (n when none)
    next_given = np.minimum.accumulate(np.where(given, np.arange(n), n)[::-1])[::-1]
    tail = np.clip(position[-1], 0.0, 1.0) if n else 0.0
    filled = np.append(target, tail)[next_given]
    return filled.astype(np.float32)


def gripper_from_signed(command: np.ndarray) -> np.ndarray:
    """Map a signed command (-1 close, +1 open) linearly onto [0, 1] (1 = open)."""
    return np.clip((np.asarray(command, np.float32).reshape(-1) + 1.0) / 2.0, 0.0, 1.0)


def _open_is_1(values: np.ndarray) -> np.ndarray:
    return np.clip(np.asarray(values, np.float32), 0.0, 1.0)


def _close_is_1(values: np.ndarray) -> np.ndarray:
    return 1.0 - _open_is_1(values)


def _signed_close_is_1(values: np.ndarray) -> np.ndarray:
    return gripper_from_signed(-np.asarray(values, np.float32))


GRIPPERS: Registry[Callable[[np.ndarray], np.ndarray]] = Registry("gripper convention")
GRIPPERS.register("open_is_1")(_open_is_1)  # absolute, 1 (or True) = open
GRIPPERS.register("close_is_1")(_close_is_1)  # absolute, 1 (or True) = closed
GRIPPERS.register("open_is_1_continuous")(gripper_from_continuous)  # opening in [0, 1], binarized
GRIPPERS.register("signed_open_is_1")(gripper_from_signed)  # -1 close, +1 open
GRIPPERS.register("signed_close_is_1")(_signed_close_is_1)  # +1 close, -1 open
GRIPPERS.register("relative")(gripper_from_relative)  # +1 close, -1 open, 0 keep
CONSTANT_GRIPPERS = {"always_open": 1.0, "always_closed": 0.0}  # no gripper value in the data
NO_GRIPPER = "none"  # no gripper dimension at all (joint and native transforms)


def gripper_names() -> list[str]:
    return sorted([*GRIPPERS.names(), *CONSTANT_GRIPPERS, NO_GRIPPER])


def check_gripper(name: str) -> None:
    """UnknownNameError listing the conventions unless `name` is one of them."""
    if name not in CONSTANT_GRIPPERS and name != NO_GRIPPER:
        GRIPPERS.get(name)


def gripper_reads_data(name: str) -> bool:
    """Whether the convention takes the action vector's last value (the others add or add nothing)."""
    return name in GRIPPERS


# ---------------------------------------------------------------- rotation encodings, (T, k) -> (T, 3) rpy
def _euler(values: np.ndarray) -> np.ndarray:
    return values


def _from_scipy(kind: str) -> Callable[[np.ndarray], np.ndarray]:
    def convert(values: np.ndarray) -> np.ndarray:
        from scipy.spatial.transform import Rotation

        values = np.asarray(values, np.float64)
        if kind == "quat":  # an all-zero quaternion (padding) is read as no rotation
            zero = np.linalg.norm(values, axis=1) == 0
            values = np.where(zero[:, None], [0.0, 0.0, 0.0, 1.0], values)
        rotation = Rotation.from_quat(values) if kind == "quat" else Rotation.from_rotvec(values)
        return rotation.as_euler("xyz").astype(np.float32)

    return convert


def _yaw(values: np.ndarray) -> np.ndarray:
    return np.concatenate([np.zeros((len(values), 2), np.float32), values], axis=1)


def _none(values: np.ndarray) -> np.ndarray:
    return np.zeros((len(values), 3), np.float32)


@dataclass(frozen=True)
class Rotation:
    """How the rotation part of an end-effector action is written: `width` raw values -> (roll, pitch, yaw)."""

    width: int
    to_euler: Callable[[np.ndarray], np.ndarray]


ROTATIONS: Registry[Rotation] = Registry("rotation encoding")
ROTATIONS.register("euler")(Rotation(3, _euler))  # roll, pitch, yaw as given
ROTATIONS.register("axis_angle")(Rotation(3, _from_scipy("rotvec")))  # rotation vector
ROTATIONS.register("quaternion")(Rotation(4, _from_scipy("quat")))  # x, y, z, w
ROTATIONS.register("yaw")(Rotation(1, _yaw))  # yaw only; roll and pitch 0
ROTATIONS.register("none")(Rotation(0, _none))  # translation only


# ---------------------------------------------------------------- action transforms
TRANSFORMS: Registry[str] = Registry("action transform")
for _name, _meaning in (
    (DELTA_EEF, "end-effector deltas -> [dx, dy, dz, droll, dpitch, dyaw, gripper]"),
    (ABSOLUTE_EEF, "absolute end-effector poses, same layout, kept absolute"),
    ("joint_position", "absolute joint positions, kept as is"),
    ("joint_delta", "per-step joint position changes, kept as is"),
    ("joint_velocity", "joint velocities, kept as is"),
    ("native", "the raw vector, kept as is"),
):
    TRANSFORMS.register(_name)(_meaning)


@dataclass(frozen=True)
class ActionSpec:
    """A dataset's action as data: keys concatenated into a vector and how to read that vector.

    keys: (step path, start, stop) slices of the flattened per-step values, concatenated in order.
    gripper_scale: raw gripper values are divided by it before the convention applies (e.g. 0..255).
    """

    keys: tuple[tuple[str, int | None, int | None], ...]
    transform: str
    rotation: str = "euler"
    gripper: str = NO_GRIPPER
    gripper_scale: float = 1.0

    def validate(self, width: int | None = None) -> None:
        """DataError (one line) for a spec that cannot work; `width` is the vector's length when known."""
        TRANSFORMS.get(self.transform)
        ROTATIONS.get(self.rotation)
        check_gripper(self.gripper)
        if not self.keys:
            raise DataError(
                "the action mapping names no action_keys; list the step keys that form the action"
            )
        if self.transform in EEF_TRANSFORMS:
            if self.gripper == NO_GRIPPER:
                raise DataError(
                    f"action_transform {self.transform} needs a gripper convention; use always_open or "
                    "always_closed when the data has no gripper value"
                )
            if width is not None:
                self.position_width(width)

    def position_width(self, width: int) -> int:
        """How many of the vector's values are the position (2 or 3); DataError when they do not add up."""
        rotation = ROTATIONS.get(self.rotation).width
        arm = width - (1 if gripper_reads_data(self.gripper) else 0)
        if arm - rotation not in (2, 3):
            gripper = " + 1 gripper" if gripper_reads_data(self.gripper) else ""
            raise DataError(
                f"the action keys give {width} values; {self.transform} with rotation {self.rotation} needs "
                f"3 position (or 2) + {rotation} rotation{gripper}; fix action_keys, rotation or gripper"
            )
        return arm - rotation

    def output_width(self, width: int) -> int:
        """The converted action's dimension for a raw vector of `width` values."""
        if self.transform in EEF_TRANSFORMS:
            return EEF_ACTION_DIM
        return width + (1 if self.gripper in CONSTANT_GRIPPERS else 0)


def read_keys(steps: Mapping[str, Any], keys: tuple) -> np.ndarray:
    """(T, D) float32: each key's per-step values flattened, sliced and concatenated in order."""
    parts = []
    for path, start, stop in keys:
        value = np.asarray(lookup(steps, path))
        parts.append(value.reshape(len(value), -1).astype(np.float32)[:, start:stop])
    return np.concatenate(parts, axis=1)


def convert_action(spec: ActionSpec, steps: Mapping[str, Any]) -> np.ndarray:
    """Raw batched steps -> (T, A) float32 actions in `spec.transform`'s convention."""
    vector = read_keys(steps, spec.keys)
    gripper = None
    if gripper_reads_data(spec.gripper):
        vector, raw = vector[:, :-1], vector[:, -1] / spec.gripper_scale
        gripper = GRIPPERS.get(spec.gripper)(raw)
    elif spec.gripper in CONSTANT_GRIPPERS:
        gripper = np.full(len(vector), CONSTANT_GRIPPERS[spec.gripper], np.float32)
    if spec.transform in EEF_TRANSFORMS:
        vector = _eef(spec, vector)
    columns = [vector] if gripper is None else [vector, np.asarray(gripper, np.float32)[:, None]]
    return np.concatenate(columns, axis=1).astype(np.float32)


def _eef(spec: ActionSpec, arm: np.ndarray) -> np.ndarray:
    """(T, position + rotation) -> (T, 6): position padded to xyz, rotation as roll, pitch, yaw."""
    n_position = spec.position_width(arm.shape[1] + (1 if gripper_reads_data(spec.gripper) else 0))
    position = np.concatenate([arm[:, :n_position], np.zeros((len(arm), 3 - n_position), np.float32)], 1)
    rotation = ROTATIONS.get(spec.rotation).to_euler(arm[:, n_position:])
    return np.concatenate([position, np.asarray(rotation, np.float32)], axis=1)

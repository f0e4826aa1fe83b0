"""Open X-Embodiment standardization: one registered entry per dataset maps its raw RLDS steps to our schema.

Why: every OXE dataset names its observations and encodes its actions differently. Selecting prior data
across robots only makes sense once all of them speak one action language, so each dataset gets an entry
that says, from its published feature spec, where state, cameras and language live and how its action
converts.

The common action convention (the one the Octo / OXE standardization uses), shape (T, 7):

    [dx, dy, dz, droll, dpitch, dyaw, gripper]

- dx..dyaw: the dataset's commanded end-effector translation and rotation deltas, in its own frame and
  units (no rescaling here; per-dataset normalization statistics in the store handle scale).
- gripper: absolute, in [0, 1], 1 = open, 0 = closed. Relative gripper commands (+1 close, -1 open,
  0 keep) are integrated; continuous positions are binarized; signed commands (-1 close, +1 open) are
  mapped linearly.

An entry may instead declare `action_convention="native"` (our own MetaWorld data: 4-d xyz + gripper
effort, kept as is). Observations become `state` (concatenated proprio slices, absent when a dataset has
none) and `image_primary` / `image_wrist`.

Raw steps are the episode's steps batched over time as numpy: a nested dict, every leaf of shape (T, ...).
Keys are addressed by "/"-joined paths, e.g. "observation/robot_obs" or "action/world_vector".
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from datamil.data.schema import OBS_STATE, is_image_key
from datamil.errors import DataError
from datamil.registry import Registry

EEF_DELTA = "eef_delta"  # the common 7-d convention above
NATIVE = "native"  # the dataset's own action space, kept as is
IMAGE_PRIMARY = "image_primary"
IMAGE_WRIST = "image_wrist"
COMMON_ACTION_DIM = 7

Steps = Mapping[str, Any]


def lookup(tree: Steps, path: str) -> Any:
    """The value at a "/"-joined path of a nested dict; KeyError when any part is missing."""
    node: Any = tree
    for part in path.split("/"):
        if not isinstance(node, Mapping) or part not in node:
            raise KeyError(path)
        node = node[part]
    return node


# ---------------------------------------------------------------- gripper conversions, (T,) -> (T,) in [0, 1]
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
    state: (raw path, start, stop) slices concatenated, in order, into `state` (empty: no state).
    images: common image key -> raw path. `None` passes every raw observation key through unchanged (our
        own layout, already `state` + `image_*`).
    language: raw path of the per-step instruction (the first step's is used).
    image_present: raw image path -> episode-level bool path that says whether the episode has that
        camera at all (bridge's `has_image_i`: frames of a missing camera are blank, not absent).
    action: raw steps -> (T, A) float actions in `action_convention`.
    action_dim: A after conversion (None: whatever the data has, for native datasets).
    success: raw episode-level features (everything but steps) -> success flag or None.
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

    def image_paths(self, raw_image_paths: list[str]) -> list[str]:
        """Raw image paths this entry reads: the rest need not be decoded."""
        if self.images is None:
            return [
                p for p in raw_image_paths if p.startswith("observation/") and is_image_key(p.split("/")[-1])
            ]
        return list(self.images.values())

    def without_images(self) -> Standardization:
        """This entry with no cameras, for reading state and actions only."""
        if self.images is None:
            return self
        required = {p: s for p, s in self.required.items() if p not in set(self.images.values())}
        return replace(self, required=required, images={})

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
            path = raw if "/" in raw else f"observation/{raw}"
            if not is_image_key(ours):
                raise DataError(f"camera {raw!r} is mapped to {ours!r}; image keys must start with 'image'")
            if ours in images:
                raise DataError(f"two cameras ({images[ours]!r}, {path!r}) are mapped to {ours!r}")
            images[ours] = path
        old = set(self.images.values())
        required = {p: s for p, s in self.required.items() if p not in old}
        required.update({p: (None, None, 3) for p in images.values()})
        return replace(self, required=required, images=images)

    def check(self, steps: Steps, where: str) -> None:
        """Raise DataError unless every required raw key is there with its published per-step shape."""
        for path, shape in self.required.items():
            try:
                value = np.asarray(lookup(steps, path))
            except KeyError:
                raise DataError(
                    f"{where}: raw key {path!r} is missing; the {self.name!r} standardization expects "
                    f"{sorted(self.required)}; pass the standardization that matches this dataset"
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
        self.check(steps, where)
        observations = self._observations(steps)
        if self.state:
            parts = [np.asarray(lookup(steps, p), np.float32)[:, a:b] for p, a, b in self.state]
            observations[OBS_STATE] = np.concatenate(parts, axis=1)
        actions = np.asarray(self.action(steps), np.float32)
        language = _first_text(lookup(steps, self.language)) if self.language else ""
        return StandardSteps(observations, actions, language)

    def _observations(self, steps: Steps) -> dict[str, np.ndarray]:
        if self.images is None:
            return {k: np.asarray(v) for k, v in steps.get("observation", {}).items()}
        return {key: np.asarray(lookup(steps, path)) for key, path in self.images.items()}


def _shape_matches(actual: tuple[int, ...], expected: tuple[int | None, ...]) -> bool:
    return len(actual) == len(expected) and all(
        e is None or a == e for a, e in zip(actual, expected, strict=True)
    )


def _is_grayscale(shape: tuple[int, ...]) -> bool:
    """(H, W) or (H, W, 1): a one-channel image."""
    return len(shape) == 2 or (len(shape) == 3 and shape[-1] == 1)


def _first_text(values: Any) -> str:
    values = np.asarray(values).reshape(-1)
    for value in values:
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


def get_standardization(name: str) -> Standardization:
    """The entry for a dataset name; UnknownNameError lists the registered names."""
    return STANDARDIZATIONS.get(name)


def _concat(*columns: np.ndarray) -> np.ndarray:
    return np.concatenate([np.asarray(c, np.float32).reshape(len(c), -1) for c in columns], axis=1)


# ---------------------------------------------------------------- RT-1 robot (Google), fractal20220817_data 0.1.0
# action: world_vector (3,) and rotation_delta (3,) are commanded end-effector displacement / rpy rotation in
# the base frame; gripper_closedness_action (1,) is a relative command (+1 close, -1 open, 0 keep).
# observation: base_pose_tool_reached (7,) = end-effector position + quaternion; gripper_closed (1,).
def _fractal_action(steps: Steps) -> np.ndarray:
    act = steps["action"]
    gripper = gripper_from_relative(act["gripper_closedness_action"][:, 0])
    return _concat(act["world_vector"], act["rotation_delta"], gripper)


def _fractal_success(episode: Mapping[str, Any]) -> bool | None:
    aspects = episode.get("aspects")
    if not aspects or not bool(aspects.get("has_aspects", False)):
        return None
    return bool(aspects["success"])


register("fractal20220817_data")(
    Standardization(
        name="fractal20220817_data",
        required={
            "action/world_vector": (3,),
            "action/rotation_delta": (3,),
            "action/gripper_closedness_action": (1,),
            "observation/base_pose_tool_reached": (7,),
            "observation/gripper_closed": (1,),
            "observation/image": (None, None, 3),
            "observation/natural_language_instruction": (),
        },
        action=_fractal_action,
        state=(
            ("observation/base_pose_tool_reached", None, None),
            ("observation/gripper_closed", None, None),
        ),
        images={IMAGE_PRIMARY: "observation/image"},
        language="observation/natural_language_instruction",
        success=_fractal_success,
    )
)


# ---------------------------------------------------------------- WidowX, bridge 0.1.0 (BridgeData V2)
# action (7,) = [3 end-effector position deltas, 3 rotation deltas (rpy), 1 continuous gripper, 1 = open];
# observation/state (7,) = [x, y, z, roll, pitch, yaw, gripper]; cameras image_0..image_3 (image_0 is the
# fixed over-the-shoulder view). We keep the commanded deltas (Octo additionally relabels them from states).
def _bridge_action(steps: Steps) -> np.ndarray:
    action = np.asarray(steps["action"], np.float32)
    return _concat(action[:, :6], gripper_from_continuous(action[:, 6]))


register("bridge", "bridge_dataset")(
    Standardization(
        name="bridge",
        required={
            "action": (7,),
            "observation/state": (7,),
            "observation/image_0": (None, None, 3),
            "language_instruction": (),
        },
        action=_bridge_action,
        state=(("observation/state", None, None),),
        images={IMAGE_PRIMARY: "observation/image_0"},
        language="language_instruction",
        image_present={f"observation/image_{i}": f"episode_metadata/has_image_{i}" for i in range(4)},
    )
)


# ---------------------------------------------------------------- Franka play (CALVIN format), taco_play 0.1.0
# action/rel_actions_world (7,) = [3 tcp position deltas, 3 euler deltas in the robot base frame, gripper],
# gripper binary with CALVIN's convention close = -1, open = +1 (the TFDS description states the reverse;
# the CALVIN dataset docs and the Octo standardization agree on +1 = open).
# observation/robot_obs (15,) = [tcp xyz (3), tcp euler (3), gripper width (1), arm joints (7), gripper action].
def _taco_action(steps: Steps) -> np.ndarray:
    rel = np.asarray(steps["action"]["rel_actions_world"], np.float32)
    return _concat(rel[:, :6], gripper_from_signed(rel[:, 6]))


register("taco_play")(
    Standardization(
        name="taco_play",
        required={
            "action/rel_actions_world": (7,),
            "observation/robot_obs": (15,),
            "observation/rgb_static": (None, None, 3),
            "observation/rgb_gripper": (None, None, 3),
            "observation/natural_language_instruction": (),
        },
        action=_taco_action,
        state=(("observation/robot_obs", 0, 7),),
        images={IMAGE_PRIMARY: "observation/rgb_static", IMAGE_WRIST: "observation/rgb_gripper"},
        language="observation/natural_language_instruction",
    )
)


# ---------------------------------------------------------------- UR5 (Berkeley AUTOLab), berkeley_autolab_ur5 0.1.0
# action: world_vector (3,) delta xyz, rotation_delta (3,) delta rpy, gripper_closedness_action () relative
# (+1 close, -1 open, 0 no change). observation/robot_state (15,) = [6 joint angles, x, y, z, qx, qy, qz, qw,
# gripper_is_closed, action_blocked]; state keeps the end-effector pose and gripper, [6:14].
def _ur5_action(steps: Steps) -> np.ndarray:
    act = steps["action"]
    gripper = gripper_from_relative(act["gripper_closedness_action"])
    return _concat(act["world_vector"], act["rotation_delta"], gripper)


register("berkeley_autolab_ur5")(
    Standardization(
        name="berkeley_autolab_ur5",
        required={
            "action/world_vector": (3,),
            "action/rotation_delta": (3,),
            "action/gripper_closedness_action": (),
            "observation/robot_state": (15,),
            "observation/image": (None, None, 3),
            "observation/hand_image": (None, None, 3),
            "observation/natural_language_instruction": (),
        },
        action=_ur5_action,
        state=(("observation/robot_state", 6, 14),),
        images={IMAGE_PRIMARY: "observation/image", IMAGE_WRIST: "observation/hand_image"},
        language="observation/natural_language_instruction",
    )
)


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

# MetaWorld (sim_tasks): 39-d state, 4-d action [dx, dy, dz, gripper effort], native.
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

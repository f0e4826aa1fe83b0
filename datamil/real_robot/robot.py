"""The one small protocol every arm implements, and the action space the safety layer reasons about.

Why a protocol and not a base class: vendor drivers stay thin mappings (protocol call -> SDK call) and
all logic (rate, safety, recording) lives above them, where it runs against `SimArm` in tests.

Observation dict returned by `observe()` (keys are constants below):
    state      (D,) float32   what the policy sees (the data layer's OBS_STATE)
    ee_pose    (3,) or (6,)   end-effector position [m] (+ roll, pitch, yaw [rad]) in the base frame
    gripper    ()   float     gripper opening in the action's gripper units
    timestamp  float          wall-clock time.time() of the reading
    image_*    (H, W, 3) uint8 camera frames (optional)
    success    bool           task success, where the robot can know it (SimArm only)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from datamil.data.schema import OBS_STATE
from datamil.errors import DatamilError

EE_POSE = "ee_pose"
GRIPPER = "gripper"
TIMESTAMP = "timestamp"
SUCCESS = "success"
STATE = OBS_STATE
MODES = ("delta", "absolute", "joint")

Observation = dict[str, object]


@dataclass(frozen=True)
class ActionSpace:
    """Where translation, rotation and gripper live in an action vector, and their physical units.

    mode: "delta" (per-step end-effector change), "absolute" (target pose) or "joint" (target joint
    positions: only per-step change and gripper limits apply, the workspace box needs forward kinematics).
    translation_scale: meters per action unit; rotation_scale: radians per action unit.
    """

    dim: int
    mode: str = "delta"
    translation: tuple[int, int] | None = (0, 3)  # [start, stop) of x, y, z
    rotation: tuple[int, int] | None = None  # [start, stop) of roll, pitch, yaw (or joints for mode=joint)
    gripper: int | None = None  # index of the gripper command
    gripper_open: float = 1.0  # gripper command that opens: what a hold sends before any command
    gripper_closed: float = 0.0  # gripper command that closes (teleop toggles between the two)
    translation_scale: float = 1.0
    rotation_scale: float = 1.0

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise DatamilError(f"action_space.mode {self.mode!r} must be one of {MODES}")
        used = [i for s in (self.translation, self.rotation) if s is not None for i in range(*s)]
        used += [] if self.gripper is None else [self.gripper]
        if self.dim <= 0 or any(not 0 <= i < self.dim for i in used) or len(set(used)) != len(used):
            raise DatamilError(
                f"action_space: translation {self.translation}, rotation {self.rotation} and gripper "
                f"{self.gripper} must be disjoint indices inside dim={self.dim}; fix datamil/configs/robot/*.yaml"
            )
        object.__setattr__(self, "translation", _pair(self.translation))
        object.__setattr__(self, "rotation", _pair(self.rotation))


def _pair(value: object) -> tuple[int, int] | None:
    """YAML gives lists; keep tuples so the dataclass stays hashable and comparable."""
    return None if value is None else (int(value[0]), int(value[1]))  # type: ignore[index]


@runtime_checkable
class Robot(Protocol):
    """An arm the control loop can drive. All methods block until done; none of them retries."""

    action_space: ActionSpace

    def connect(self) -> None:
        """Open the connection (imports the vendor SDK here, never at module import)."""

    def observe(self) -> Observation:
        """The latest reading: see the module docstring for keys and shapes."""

    def apply(self, action: np.ndarray) -> None:
        """Send one (A,) action, already checked by the safety layer, in `action_space` convention."""

    def home(self) -> Observation:
        """Move to the start pose of an episode (a new layout for SimArm) and return the first reading."""

    def close(self) -> None:
        """Stop motion and release the hardware; safe to call twice."""


def check_observation(obs: Observation, action_space: ActionSpace) -> None:
    """Fail loudly when a driver breaks the observation contract the safety layer relies on."""
    for key in (STATE, EE_POSE, TIMESTAMP):
        if key not in obs:
            raise DatamilError(
                f"robot observation lacks {key!r}; the driver must fill it (datamil/real_robot/robot.py)"
            )
    pose = np.asarray(obs[EE_POSE])
    if action_space.mode != "joint" and pose.shape not in ((3,), (6,)):
        raise DatamilError(f"robot observation ee_pose has shape {pose.shape}, expected (3,) or (6,)")

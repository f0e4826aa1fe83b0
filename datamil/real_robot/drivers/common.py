"""What the end-effector drivers share: settings validation, the 7-d delta convention, pose math, and
the base class that holds them."""

from __future__ import annotations

import ipaddress
import time
from typing import ClassVar

import numpy as np

from datamil.errors import DatamilError
from datamil.real_robot.cameras import CameraSet
from datamil.real_robot.robot import EE_POSE, GRIPPER, STATE, TIMESTAMP, ActionSpace, Observation

# The common OXE convention of datamil/data/oxe.py: [dx, dy, dz, droll, dpitch, dyaw, gripper (1 = open)].
OXE_DELTA = ActionSpace(dim=7, mode="delta", translation=(0, 3), rotation=(3, 6), gripper=6)


def check_host(host: str, what: str) -> str:
    """An IP address or host name; fails with one line at config time, not at connect time."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if not host or " " in host:
            raise DatamilError(f"{what}: {host!r} is not an IP address or host name") from None
    return host


def ee_action_space(spec: ActionSpace | dict | None) -> ActionSpace:
    """The configured action space (a dict from YAML), OXE 7-d delta by default."""
    if spec is None:
        return OXE_DELTA
    space = spec if isinstance(spec, ActionSpace) else ActionSpace(**dict(spec))
    if space.mode != "delta" or space.translation is None or space.rotation is None:
        raise DatamilError("end-effector drivers take delta actions with translation and rotation slices")
    return space


def apply_delta(pose: np.ndarray, action: np.ndarray, space: ActionSpace) -> np.ndarray:
    """(6,) target [xyz m, rpy rad] from the current pose (6,) and a delta action in `space` units.

    The rotation delta is applied in the base frame (R_target = R_delta @ R_now), the OXE convention.
    """
    from scipy.spatial.transform import Rotation

    xyz = pose[:3] + action[slice(*space.translation)] * space.translation_scale
    delta = Rotation.from_euler("xyz", action[slice(*space.rotation)] * space.rotation_scale)
    rpy = (delta * Rotation.from_euler("xyz", pose[3:6])).as_euler("xyz")
    return np.concatenate([xyz, rpy])


def ee_observation(pose: np.ndarray, gripper: float, cameras: CameraSet) -> Observation:
    """The protocol's observation for an end-effector arm: state = [xyz, rpy, gripper] (7,)."""
    pose = np.asarray(pose, np.float64)
    state = np.concatenate([pose, [gripper]]).astype(np.float32)
    return {STATE: state, EE_POSE: pose, GRIPPER: float(gripper), TIMESTAMP: time.time(), **cameras.read()}


class EndEffectorArm:
    """The part every end-effector driver has alike: a validated host, the 7-d delta action space and the
    cameras; `observe` from the driver's own `_pose` (6,) and `_gripper` (action units)."""

    vendor: ClassVar[str]  # names the driver in errors, e.g. "franka"

    def __init__(self, host: str, action_space: ActionSpace | dict | None, cameras: list | None) -> None:
        self.host = check_host(host, f"{self.vendor} host")
        self.action_space = ee_action_space(action_space)
        self.cameras = CameraSet(cameras)

    def _pose(self) -> np.ndarray:
        raise NotImplementedError

    def _gripper(self) -> float:
        raise NotImplementedError

    def observe(self) -> Observation:
        return ee_observation(self._pose(), self._gripper(), self.cameras)

"""Franka Emika Panda / FR3 through `franky-control` (extra `datamil[franka]`), a thin mapping.

Actions: the common 7-d delta convention (meters, radians, gripper 1 = open). Each step becomes an
asynchronous absolute Cartesian motion to (current pose + delta), which franky blends into the running
one; the gripper moves only when the command crosses 0.5, since Franka's gripper cannot track a stream.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from datamil.real_robot.drivers.common import EndEffectorArm, apply_delta
from datamil.real_robot.robot import ActionSpace, Observation
from datamil.registry import configured

# datamil/configs/robot/franka.yaml is the only source of these defaults
DEFAULTS = configured("robot", "franka", key="robot")


class FrankaArm(EndEffectorArm):
    """Franka through franky: 7-d delta actions become asynchronous absolute Cartesian motions."""

    vendor = "franka"

    def __init__(
        self,
        host: str,
        dynamics_factor: float = DEFAULTS["dynamics_factor"],
        gripper_width: float = DEFAULTS["gripper_width"],
        gripper_speed: float = DEFAULTS["gripper_speed"],
        home_joints: Sequence[float] = DEFAULTS["home_joints"],
        action_space: ActionSpace | dict | None = None,
        cameras: list | None = None,
    ) -> None:
        super().__init__(host, action_space, cameras)
        self.dynamics_factor, self.gripper_width, self.gripper_speed = (
            dynamics_factor,
            gripper_width,
            gripper_speed,
        )
        self.home_joints = tuple(float(q) for q in home_joints)
        self._robot: Any = None
        self._hand: Any = None  # franky.Gripper
        self._open: bool | None = None

    def connect(self) -> None:
        import franky

        self._franky = franky
        self._robot = franky.Robot(self.host)
        self._robot.recover_from_errors()
        self._robot.relative_dynamics_factor = self.dynamics_factor
        self._hand = franky.Gripper(self.host)
        self.cameras.open()

    def _pose(self) -> np.ndarray:
        from scipy.spatial.transform import Rotation

        affine = self._robot.current_cartesian_state.pose.end_effector_pose
        rpy = Rotation.from_quat(np.asarray(affine.quaternion)).as_euler("xyz")
        return np.concatenate([np.asarray(affine.translation), rpy])

    def _gripper(self) -> float:
        return float(self._hand.width) / self.gripper_width

    def apply(self, action: np.ndarray) -> None:
        from scipy.spatial.transform import Rotation

        target = apply_delta(self._pose(), action, self.action_space)
        quat = Rotation.from_euler("xyz", target[3:]).as_quat()
        motion = self._franky.CartesianMotion(self._franky.Affine(target[:3].tolist(), quat.tolist()))
        self._robot.move(motion, asynchronous=True)
        self._set_gripper(bool(action[self.action_space.gripper] > 0.5))

    def _set_gripper(self, open_: bool) -> None:
        if open_ != self._open:
            self._hand.move_async(self.gripper_width if open_ else 0.0, self.gripper_speed)
            self._open = open_

    def home(self) -> Observation:
        self._robot.move(self._franky.JointMotion(list(self.home_joints)))
        self._set_gripper(True)
        return self.observe()

    def close(self) -> None:
        if self._robot is not None:
            self._robot.join_motion()
            self._robot = None
        self.cameras.close()

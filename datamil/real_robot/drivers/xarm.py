"""UFACTORY xArm 5/6/7 and Lite 6 through `xarm-python-sdk` (extra `datamil[xarm]`), a thin mapping.

Actions: the common 7-d delta convention. The arm runs in servo mode (mode 1); each step sends
`set_servo_cartesian` to (current pose + delta). The SDK speaks millimeters; this driver converts.
Gripper: the xArm gripper, 0..850 counts, 1 = open maps to 850.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from datamil.errors import DatamilError
from datamil.real_robot.drivers.common import EndEffectorArm, apply_delta
from datamil.real_robot.robot import ActionSpace, Observation
from datamil.registry import configured

GRIPPER_COUNTS = 850.0


# datamil/configs/robot/xarm.yaml is the only source of these defaults
DEFAULTS = configured("robot", "xarm", key="robot")


class XArm(EndEffectorArm):
    """xArm through xarm-python-sdk: 7-d delta actions become servo-mode Cartesian targets (mm)."""

    vendor = "xarm"

    def __init__(
        self,
        host: str,
        gripper: bool = DEFAULTS["gripper"],
        action_space: ActionSpace | dict | None = None,
        cameras: list | None = None,
    ) -> None:
        super().__init__(host, action_space, cameras)
        self.has_gripper = gripper
        self._arm: Any = None

    def connect(self) -> None:
        from xarm.wrapper import XArmAPI

        self._arm = XArmAPI(self.host, is_radian=True)
        self._arm.clean_error()
        self._arm.motion_enable(enable=True)
        if self.has_gripper:
            self._arm.set_gripper_enable(True)
        self._servo_mode()
        self.cameras.open()

    def _servo_mode(self) -> None:
        self._arm.set_mode(1)
        self._arm.set_state(0)

    def _pose(self) -> np.ndarray:
        code, pose = self._arm.get_position(is_radian=True)
        if code != 0:
            raise DatamilError(f"xarm get_position failed with code {code}; check the arm's error state")
        pose = np.asarray(pose, np.float64)
        return np.concatenate([pose[:3] / 1000.0, pose[3:6]])

    def _gripper(self) -> float:
        if not self.has_gripper:
            return 1.0
        code, counts = self._arm.get_gripper_position()
        return float(counts) / GRIPPER_COUNTS if code == 0 and counts is not None else 1.0

    def apply(self, action: np.ndarray) -> None:
        target = apply_delta(self._pose(), action, self.action_space)
        self._arm.set_servo_cartesian(
            np.concatenate([target[:3] * 1000.0, target[3:]]).tolist(), is_radian=True
        )
        if self.has_gripper:
            counts = float(action[self.action_space.gripper]) * GRIPPER_COUNTS
            self._arm.set_gripper_position(counts, wait=False)

    def home(self) -> Observation:
        self._arm.set_mode(0)
        self._arm.set_state(0)
        self._arm.move_gohome(wait=True)
        self._servo_mode()
        return self.observe()

    def close(self) -> None:
        if self._arm is not None:
            self._arm.disconnect()
            self._arm = None
        self.cameras.close()

"""Universal Robots (UR3/5/10/e) through `ur-rtde` (extra `datamil[ur]`), a thin mapping.

Actions: the common 7-d delta convention. Each step is a `servoL` to (current TCP pose + delta), which
RTDE tracks at its own 500 Hz; the gripper (optional, a Robotiq on the tool flange through RTDE's
`RobotiqGripper`-style socket) is driven only when `gripper_port` is set.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from real_robot.cameras import CameraSet
from real_robot.drivers.common import apply_delta, check_host, ee_action_space, ee_observation
from real_robot.robot import ActionSpace, Observation

HOME_JOINTS = (0.0, -1.571, 1.571, -1.571, -1.571, 0.0)


class URArm:
    """UR through ur-rtde: 7-d delta actions become servoL targets."""

    def __init__(
        self,
        host: str,
        servo_time: float = 0.066,
        lookahead: float = 0.1,
        gain: int = 300,
        home_joints: Sequence[float] = HOME_JOINTS,
        action_space: ActionSpace | dict | None = None,
        cameras: list | None = None,
    ) -> None:
        self.host = check_host(host, "ur host")
        self.servo_time, self.lookahead, self.gain = servo_time, lookahead, gain
        self.home_joints = tuple(float(q) for q in home_joints)
        self.action_space = ee_action_space(action_space)
        self.cameras = CameraSet(cameras)
        self._control: Any = None
        self._receive: Any = None
        self._gripper = 1.0

    def connect(self) -> None:
        import rtde_control
        import rtde_receive

        self._control = rtde_control.RTDEControlInterface(self.host)
        self._receive = rtde_receive.RTDEReceiveInterface(self.host)
        self.cameras.open()

    def _pose(self) -> np.ndarray:
        """[xyz, rpy] from RTDE's [xyz, rotation vector]."""
        from scipy.spatial.transform import Rotation

        tcp = np.asarray(self._receive.getActualTCPPose())
        return np.concatenate([tcp[:3], Rotation.from_rotvec(tcp[3:]).as_euler("xyz")])

    def observe(self) -> Observation:
        return ee_observation(self._pose(), self._gripper, self.cameras)

    def apply(self, action: np.ndarray) -> None:
        from scipy.spatial.transform import Rotation

        target = apply_delta(self._pose(), action, self.action_space)
        pose = np.concatenate([target[:3], Rotation.from_euler("xyz", target[3:]).as_rotvec()]).tolist()
        self._control.servoL(pose, 0.0, 0.0, self.servo_time, self.lookahead, self.gain)
        self._gripper = float(action[self.action_space.gripper])

    def home(self) -> Observation:
        self._control.servoStop()
        self._control.moveJ(list(self.home_joints))
        return self.observe()

    def close(self) -> None:
        if self._control is not None:
            self._control.servoStop()
            self._control.stopScript()
            self._receive.disconnect()
            self._control = None
        self.cameras.close()

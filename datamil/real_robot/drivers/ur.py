"""Universal Robots (UR3/5/10/e) through `ur-rtde` (extra `datamil[ur]`), a thin mapping.

Actions: the common 7-d delta convention. Each step is a `servoL` to (current TCP pose + delta), which
RTDE tracks at its own 500 Hz.

Gripper (optional): one that opens and closes on a standard digital output of the control box
(`gripper_output`, 0..7), set through RTDE's IO interface. The observed gripper state is that output as
the controller reports it (`getDigitalOutState`), mapped to the action's open / closed values: it says
what the gripper is told, not where its fingers are. Without `gripper_output` there is no gripper, and
the state's gripper entry is the constant `gripper_open`, not a measurement.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from datamil.errors import DatamilError
from datamil.real_robot.drivers.common import EndEffectorArm, apply_delta
from datamil.real_robot.robot import ActionSpace, Observation
from datamil.registry import configured

# datamil/configs/robot/ur.yaml is the only source of these defaults
DEFAULTS = configured("robot", "ur", key="robot")


class URArm(EndEffectorArm):
    """UR through ur-rtde: 7-d delta actions become servoL targets."""

    vendor = "ur"

    def __init__(
        self,
        host: str,
        servo_time: float = DEFAULTS["servo_time"],
        lookahead: float = DEFAULTS["lookahead"],
        gain: int = DEFAULTS["gain"],
        home_joints: Sequence[float] = DEFAULTS["home_joints"],
        action_space: ActionSpace | dict | None = None,
        cameras: list | None = None,
        gripper_output: int | None = None,
        gripper_close_level: bool = DEFAULTS["gripper_close_level"],
    ) -> None:
        super().__init__(host, action_space, cameras)
        self.servo_time, self.lookahead, self.gain = servo_time, lookahead, gain
        self.home_joints = tuple(float(q) for q in home_joints)
        if gripper_output is not None and gripper_output not in range(8):
            raise DatamilError(f"ur gripper_output={gripper_output} must be a standard digital output, 0..7")
        self.gripper_output, self.gripper_close_level = gripper_output, bool(gripper_close_level)
        self._control: Any = None
        self._receive: Any = None
        self._io: Any = None

    def connect(self) -> None:
        import rtde_control
        import rtde_receive

        self._control = rtde_control.RTDEControlInterface(self.host)
        self._receive = rtde_receive.RTDEReceiveInterface(self.host)
        if self.gripper_output is not None:
            import rtde_io

            self._io = rtde_io.RTDEIOInterface(self.host)
        self.cameras.open()

    def _pose(self) -> np.ndarray:
        """[xyz, rpy] from RTDE's [xyz, rotation vector]."""
        from scipy.spatial.transform import Rotation

        tcp = np.asarray(self._receive.getActualTCPPose())
        return np.concatenate([tcp[:3], Rotation.from_rotvec(tcp[3:]).as_euler("xyz")])

    def _gripper(self) -> float:
        """The gripper output as the controller reports it, in action units (gripper_open without one)."""
        space = self.action_space
        if self.gripper_output is None:
            return space.gripper_open
        closed = self._receive.getDigitalOutState(self.gripper_output) == self.gripper_close_level
        return space.gripper_closed if closed else space.gripper_open

    def _set_gripper(self, command: float) -> None:
        """Drive the output to the level of whichever of open / closed the command is nearer."""
        if self.gripper_output is None:
            return
        space = self.action_space
        close = abs(command - space.gripper_closed) < abs(command - space.gripper_open)
        level = self.gripper_close_level if close else not self.gripper_close_level
        self._io.setStandardDigitalOut(self.gripper_output, level)

    def apply(self, action: np.ndarray) -> None:
        from scipy.spatial.transform import Rotation

        target = apply_delta(self._pose(), action, self.action_space)
        pose = np.concatenate([target[:3], Rotation.from_euler("xyz", target[3:]).as_rotvec()]).tolist()
        self._control.servoL(pose, 0.0, 0.0, self.servo_time, self.lookahead, self.gain)
        self._set_gripper(float(action[self.action_space.gripper]))

    def home(self) -> Observation:
        self._control.servoStop()
        self._control.moveJ(list(self.home_joints))
        self._set_gripper(self.action_space.gripper_open)
        return self.observe()

    def close(self) -> None:
        if self._control is not None:
            self._control.servoStop()
            self._control.stopScript()
            self._receive.disconnect()
            if self._io is not None:
                self._io.disconnect()
                self._io = None
            self._control = None
        self.cameras.close()

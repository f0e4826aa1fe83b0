"""Low-cost arms (SO-100/SO-101, Koch, ...) through LeRobot's robot classes, where LeRobot imports.

Actions are LeRobot's own: one target position per motor, in the order of the robot's `action_features`
(the gripper last), so the action space is mode "joint" and the safety layer limits the per-step joint
change and the gripper range (the workspace box would need forward kinematics). `rotation_scale`
converts LeRobot's joint units to radians (degrees by default).
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from datamil.errors import DatamilError
from datamil.real_robot.robot import EE_POSE, GRIPPER, STATE, TIMESTAMP, ActionSpace, Observation
from datamil.real_robot.safety import JOINTS
from datamil.registry import configured


def make_lerobot_device(kind: str, type_name: str, **config: Any) -> Any:
    """A LeRobot robot ("robot") or teleoperator ("teleoperator") from its registered config type name."""
    try:
        base = importlib.import_module(f"lerobot.{kind}s")
    except ImportError as e:
        raise DatamilError(f"robot=lerobot needs LeRobot ({e}); pip install lerobot") from None
    try:  # config classes register when their module is imported: so100_follower -> lerobot.robots.so100_follower
        importlib.import_module(f"lerobot.{kind}s.{type_name}")
    except ImportError:
        pass
    config_base = getattr(base, "RobotConfig" if kind == "robot" else "TeleoperatorConfig")
    make = getattr(base, "make_robot_from_config" if kind == "robot" else "make_teleoperator_from_config")
    return make(config_base.get_choice_class(type_name)(**config))


# datamil/configs/robot/lerobot.yaml is the only source of these defaults
DEFAULTS = configured("robot", "lerobot", key="robot")


class LeRobotArm:
    """The Robot protocol on a LeRobot follower arm."""

    def __init__(
        self,
        robot_type: str = DEFAULTS["robot_type"],
        port: str = DEFAULTS["port"],
        robot_id: str = DEFAULTS["robot_id"],
        motors: Sequence[str] = DEFAULTS["motors"],
        rotation_scale: float = DEFAULTS["rotation_scale"],
        home_joints: list[float] | None = None,
        home_steps: int = 60,
    ) -> None:
        self.robot_type, self.port, self.robot_id = robot_type, port, robot_id
        self.motors = list(motors)
        n = len(self.motors)
        if n < 2 or (home_joints is not None and len(home_joints) != n):
            raise DatamilError(f"lerobot: {n} motors and home_joints {home_joints} do not match")
        self.action_space = ActionSpace(
            dim=n,
            mode="joint",
            translation=None,
            rotation=(0, n - 1),
            gripper=n - 1,
            rotation_scale=rotation_scale,
            gripper_open=100.0,
            gripper_closed=0.0,
        )
        self.home_joints, self.home_steps = home_joints, home_steps
        self._robot: Any = None

    def connect(self) -> None:
        self._robot = make_lerobot_device("robot", self.robot_type, port=self.port, id=self.robot_id)
        self._robot.connect()

    def observe(self) -> Observation:
        raw = self._robot.get_observation()
        positions = np.asarray([raw[f"{m}.pos"] for m in self.motors], np.float32)
        images = {
            f"image_{k}": np.asarray(v) for k, v in raw.items() if isinstance(v, np.ndarray) and v.ndim == 3
        }
        return {
            STATE: positions,
            JOINTS: positions[:-1].astype(np.float64) * self.action_space.rotation_scale,
            EE_POSE: np.zeros(0),
            GRIPPER: float(positions[-1]),
            TIMESTAMP: time.time(),
            **images,
        }

    def apply(self, action: np.ndarray) -> None:
        self._robot.send_action({f"{m}.pos": float(a) for m, a in zip(self.motors, action, strict=True)})

    def home(self) -> Observation:
        """Glide to `home_joints` (if set) in `home_steps` steps; LeRobot arms have no homing of their own."""
        if self.home_joints is not None:
            start = self.observe()[STATE]
            for alpha in np.linspace(0.0, 1.0, self.home_steps):
                self.apply(start + alpha * (np.asarray(self.home_joints, np.float32) - start))
                time.sleep(1 / 30)
        return self.observe()

    def close(self) -> None:
        if self._robot is not None:
            self._robot.disconnect()
            self._robot = None

"""Vendor drivers: each a thin mapping between the Robot protocol and one SDK, imported in connect().

Constructing a driver validates its settings and touches no hardware and no SDK, so every config under
datamil/configs/robot/ loads and validates on any machine (tests do). A driver registers by its config file
alone, datamil/configs/robot/<name>.yaml with `robot._target_: <its class>`; ROBOTS is derived from that group.
"""

from datamil.real_robot.drivers.franka import FrankaArm
from datamil.real_robot.drivers.lerobot import LeRobotArm
from datamil.real_robot.drivers.ur import URArm
from datamil.real_robot.drivers.xarm import XArm
from datamil.real_robot.sim_arm import SimArm
from datamil.registry import ConfigRegistry

ROBOTS = ConfigRegistry("robot", "robot", key="robot")

__all__ = ["ROBOTS", "FrankaArm", "LeRobotArm", "SimArm", "URArm", "XArm"]

"""Vendor drivers: each a thin mapping between the Robot protocol and one SDK, imported in connect().

Constructing a driver validates its settings and touches no hardware and no SDK, so every config under
datamil/configs/robot/ loads and validates on any machine (tests do). Registered by the `robot=` option name.
"""

from datamil.real_robot.drivers.franka import FrankaArm
from datamil.real_robot.drivers.lerobot import LeRobotArm
from datamil.real_robot.drivers.ur import URArm
from datamil.real_robot.drivers.xarm import XArm
from datamil.real_robot.sim_arm import SimArm
from datamil.registry import Registry

ROBOTS: Registry[type] = Registry("robot")
for _name, _cls in {
    "sim": SimArm,
    "franka": FrankaArm,
    "ur": URArm,
    "xarm": XArm,
    "lerobot": LeRobotArm,
}.items():
    ROBOTS.register(_name)(_cls)

__all__ = ["ROBOTS", "FrankaArm", "LeRobotArm", "SimArm", "URArm", "XArm"]

"""Teleoperators: action sources driven by a person (keyboard, SpaceMouse, leader arm) or a script.

Every operator is an ActionSource (control.py): `reset(seed)`, `next(obs, timeout) -> (A,) | None`, and
`done` (the operator ended the episode). They speak the robot's own action space (robot.ActionSpace) and
pass through the same safety layer as a policy. The scripted operator (the MetaWorld expert) is what the
tests use as "the person". Registered by name = the `operator=` option of datamil/configs/teleop.yaml.
"""

from __future__ import annotations

import threading

import numpy as np

from datamil.errors import DatamilError
from datamil.real_robot.keys import KeyEvents
from datamil.real_robot.robot import STATE, ActionSpace, Observation
from datamil.registry import Registry

OPERATORS: Registry[type] = Registry("teleoperator")

# key -> (axis, sign); axes 0-2 are translation x, y, z and 3-5 rotation roll, pitch, yaw
KEY_AXES = {
    "w": (0, 1), "s": (0, -1), "a": (1, 1), "d": (1, -1), "r": (2, 1), "f": (2, -1),
    "u": (3, 1), "o": (3, -1), "i": (4, 1), "k": (4, -1), "j": (5, 1), "l": (5, -1),
}  # fmt: skip


def twist_action(space: ActionSpace, twist: np.ndarray, gripper: float) -> np.ndarray:
    """An (A,) delta action from a 6-d twist in action units and a gripper command."""
    if space.mode != "delta":
        raise DatamilError(f"teleoperation by twist needs a delta action space, not {space.mode!r}")
    action = np.zeros(space.dim, np.float32)
    if space.translation is not None:
        action[slice(*space.translation)] = twist[:3]
    if space.rotation is not None:
        action[slice(*space.rotation)] = twist[3:6]
    if space.gripper is not None:
        action[space.gripper] = gripper
    return action


@OPERATORS.register("scripted")
class ScriptedOperator:
    """The task's scripted expert (datamil.sim_tasks) reading the state: the stand-in operator of the tests."""

    done = False

    def __init__(self, task: str, space: ActionSpace | None = None, keys: KeyEvents | None = None) -> None:
        from datamil.sim_tasks import make_expert

        self.expert = make_expert(task)

    def reset(self, seed: int) -> None:
        pass

    def next(self, obs: Observation, timeout: float) -> np.ndarray | None:
        return self.expert(np.asarray(obs[STATE]))


@OPERATORS.register("keyboard")
class KeyboardOperator:
    """w/s a/d r/f move x/y/z, u/o i/k j/l turn, space toggles the gripper, enter ends the episode.

    A press moves for `hold_steps` steps, so a held key (auto-repeat) moves continuously.
    """

    def __init__(
        self, task: str, space: ActionSpace, keys: KeyEvents, speed: float = 1.0, hold_steps: int = 3
    ) -> None:
        self.space, self.speed, self.hold_steps = space, speed, hold_steps
        self._lock = threading.Lock()
        self.reset(0)
        keys.subscribe(self._on_key)

    def reset(self, seed: int) -> None:
        self._twist, self._left, self._gripper, self.done = (
            np.zeros(6, np.float32),
            0,
            self.space.gripper_open,
            False,
        )

    def _on_key(self, key: str) -> None:
        with self._lock:
            if key in KEY_AXES:
                axis, sign = KEY_AXES[key]
                self._twist = np.zeros(6, np.float32)
                self._twist[axis] = sign * self.speed
                self._left = self.hold_steps
            elif key == "space":
                closed = self._gripper == self.space.gripper_closed
                self._gripper = self.space.gripper_open if closed else self.space.gripper_closed
            elif key == "enter":
                self.done = True

    def next(self, obs: Observation, timeout: float) -> np.ndarray | None:
        with self._lock:
            twist = self._twist if self._left > 0 else np.zeros(6, np.float32)
            self._left = max(self._left - 1, 0)
            return twist_action(self.space, twist, self._gripper)


@OPERATORS.register("spacemouse")
class SpaceMouseOperator:
    """A 3Dconnexion SpaceMouse (extra `pyspacemouse`): the puck is the twist, button 0 toggles the
    gripper, button 1 ends the episode. `speed` is action units at full deflection."""

    def __init__(
        self, task: str, space: ActionSpace, keys: KeyEvents | None = None, speed: float = 1.0
    ) -> None:
        try:
            import pyspacemouse
        except ImportError as e:
            raise DatamilError(
                f"operator=spacemouse needs pyspacemouse ({e}); pip install pyspacemouse"
            ) from None
        if not pyspacemouse.open():
            raise DatamilError("no SpaceMouse found; plug it in and check the udev permissions")
        self.device, self.space, self.speed = pyspacemouse, space, speed
        self.reset(0)

    def reset(self, seed: int) -> None:
        self._gripper, self._pressed, self.done = self.space.gripper_open, False, False

    def next(self, obs: Observation, timeout: float) -> np.ndarray | None:
        state = self.device.read()
        buttons = list(getattr(state, "buttons", [0, 0])) + [0, 0]
        if buttons[0] and not self._pressed:
            closed = self._gripper == self.space.gripper_closed
            self._gripper = self.space.gripper_open if closed else self.space.gripper_closed
        self._pressed = bool(buttons[0])
        self.done = self.done or bool(buttons[1])
        twist = np.array([state.y, -state.x, state.z, state.roll, state.pitch, -state.yaw], np.float32)
        return twist_action(self.space, twist * self.speed, self._gripper)


@OPERATORS.register("leader")
class LeaderArmOperator:
    """A LeRobot leader arm (SO-100 / Koch) mirrored joint for joint by a `lerobot` follower (mode=joint).

    `teleop_type` and `port` name LeRobot's teleoperator config, e.g. "so100_leader" on /dev/ttyACM0.
    """

    def __init__(
        self, task: str, space: ActionSpace, keys: KeyEvents | None = None, teleop_type: str = "so100_leader",
        port: str = "/dev/ttyACM0", teleop_id: str = "leader",
    ) -> None:  # fmt: skip
        if space.mode != "joint":
            raise DatamilError("operator=leader mirrors joints: use it with robot=lerobot (mode joint)")
        from datamil.real_robot.drivers.lerobot import make_lerobot_device

        self.device = make_lerobot_device("teleoperator", teleop_type, port=port, id=teleop_id)
        self.device.connect()
        self.done = False

    def reset(self, seed: int) -> None:
        pass

    def next(self, obs: Observation, timeout: float) -> np.ndarray | None:
        return np.asarray(list(self.device.get_action().values()), np.float32)

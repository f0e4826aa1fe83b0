"""SimArm: the Robot protocol on a MuJoCo MetaWorld task (the Sawyer arm), with its success signal.

It is the test double and the dry-run target: real physics, the same observation dict as a real arm,
and the same 39-d state as the MetaWorld data `sim_tasks` generates, so recorded demos mix with it.

Action convention (MetaWorld's own, 4-d, each in [-1, 1]):
    [dx, dy, dz, grip]  hand mocap moves by 0.01 m per unit per step; grip is an effort, +1 close, -1 open.
Mapping to the common 7-d OXE convention of datamil/data/oxe.py ([dx, dy, dz, droll, dpitch, dyaw,
gripper], gripper absolute in [0, 1], 1 = open): translation * 0.01 m, zero rotation, gripper = (1 - grip) / 2.
`to_common` / `from_common` do it both ways.
"""

from __future__ import annotations

import time

import numpy as np

from real_robot.robot import EE_POSE, GRIPPER, STATE, SUCCESS, TIMESTAMP, ActionSpace, Observation

METERS_PER_UNIT = 0.01  # MetaWorld's action_scale: mocap displacement per unit action per step
SIM_ACTION_SPACE = ActionSpace(
    dim=4,
    mode="delta",
    translation=(0, 3),
    gripper=3,
    gripper_open=-1.0,
    gripper_closed=1.0,
    translation_scale=METERS_PER_UNIT,
)


def to_common(action: np.ndarray) -> np.ndarray:
    """(..., 4) MetaWorld actions -> (..., 7) common OXE actions (meters, zero rotation, 1 = open)."""
    action = np.asarray(action, np.float32)
    rotation = np.zeros((*action.shape[:-1], 3), np.float32)
    gripper = (1.0 - action[..., 3:4]) / 2.0
    return np.concatenate([action[..., :3] * METERS_PER_UNIT, rotation, gripper], axis=-1)


def from_common(action: np.ndarray) -> np.ndarray:
    """(..., 7) common OXE actions -> (..., 4) MetaWorld actions; rotation is dropped (the hand cannot turn)."""
    action = np.asarray(action, np.float32)
    grip = 1.0 - 2.0 * action[..., 6:7]
    return np.concatenate([action[..., :3] / METERS_PER_UNIT, grip], axis=-1)


class SimArm:
    """A MetaWorld env behind the Robot protocol. `home()` starts the next seeded layout of the task."""

    action_space = SIM_ACTION_SPACE

    def __init__(
        self, task: str = "metaworld/reach", seed: int = 0, stream: int = 0, max_env_steps: int = 5000
    ) -> None:
        self.task, self.seed, self.stream, self.max_env_steps = task, seed, stream, max_env_steps
        self._env = None
        self._obs: np.ndarray | None = None
        self._success = False
        self.episode = -1

    def connect(self) -> None:
        """Build the env (MetaWorld imports here, like a vendor SDK would)."""
        from sim_tasks import make_env

        if self._env is None:
            self._env = make_env(self.task, self.seed, self.stream, max_steps=self.max_env_steps)

    def _require_env(self):
        if self._env is None:
            from datamil.errors import DatamilError

            raise DatamilError("SimArm is not connected; call connect() first")
        return self._env

    def home(self) -> Observation:
        obs, info = self._require_env().reset()
        self._obs, self._success, self.episode = obs, False, int(info["episode"])
        return self.observe()

    def observe(self) -> Observation:
        if self._obs is None:
            self.home()
        state = np.asarray(self._obs, np.float32)
        return {
            STATE: state,
            EE_POSE: state[:3].astype(np.float64),
            GRIPPER: float(state[3]),
            TIMESTAMP: time.time(),
            SUCCESS: self._success,
        }

    def apply(self, action: np.ndarray) -> None:
        obs, _, _, _, info = self._require_env().step(np.asarray(action, np.float64))
        self._obs = obs
        self._success = self._success or bool(info.get("success", 0.0))

    def close(self) -> None:
        if self._env is not None:
            self._env.close()
            self._env = None

"""SimArm: the Robot protocol on a MuJoCo MetaWorld task (the Sawyer arm), with its success signal.

It is the test double and the dry-run target: real physics, the same observation dict as a real arm,
and the same 39-d state as the MetaWorld data `datamil.sim_tasks` generates, so recorded demos mix with it.

Action convention (MetaWorld's own, 4-d, each in [-1, 1]):
    [dx, dy, dz, grip]  hand mocap moves by 0.01 m per unit per step; grip is an effort, +1 close, -1 open.
Mapping to the common 7-d OXE convention of datamil/data/oxe.py ([dx, dy, dz, droll, dpitch, dyaw,
gripper], gripper absolute in [0, 1], 1 = open): translation * 0.01 m, zero rotation, gripper = (1 - grip) / 2.
`to_common` / `from_common` do it both ways.

Cameras: `cameras={"image_primary": "corner"}` adds (H, W, 3) uint8 frames of those MetaWorld cameras
(upright, `image_size`, datamil.sim_tasks' fast render flags) to every observation, as a real arm's cameras do.
The env then runs in a worker process (datamil.real_robot.sim_worker): Mesa's EGL must never share a process
with the TensorFlow that writes recordings. A frame is rendered in `observe()`, like a camera read, so
the control loop's latency includes it. `render_fast` / `render_samples` (scene flags, multisampling)
default to what generated image data uses; `run` takes them from the served policy, so SimArm renders
the frames the policy was trained on.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from datamil.errors import DatamilError
from datamil.real_robot.robot import EE_POSE, GRIPPER, STATE, SUCCESS, TIMESTAMP, ActionSpace, Observation
from datamil.registry import configured

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


# datamil/configs/robot/sim.yaml is the only source of these defaults
DEFAULTS = configured("robot", "sim", key="robot")


class SimArm:
    """A MetaWorld env behind the Robot protocol. `home()` starts the next seeded layout of the task."""

    action_space = SIM_ACTION_SPACE

    def __init__(
        self,
        task: str = "metaworld/reach",
        seed: int = 0,
        stream: int = DEFAULTS["stream"],
        max_env_steps: int = DEFAULTS["max_env_steps"],
        cameras: Mapping[str, str] | None = None,
        image_size: Sequence[int] = DEFAULTS["image_size"],
        render_fast: bool = DEFAULTS["render_fast"],
        render_samples: int = DEFAULTS["render_samples"],
    ) -> None:
        self.task, self.seed, self.stream, self.max_env_steps = task, seed, stream, max_env_steps
        self.render_fast = bool(render_fast)
        self.render_samples = int(render_samples)
        self._sim: Any = None  # datamil.real_robot.sim_worker.SimEnv here, or EnvProcess with cameras
        self.cameras: Any = None  # datamil.sim_tasks.render.CameraConfig, or None: no image observations
        self.set_cameras(cameras, image_size)
        self.episode = -1

    @property
    def camera_keys(self) -> list[str]:
        """The image observation keys this arm provides, e.g. ["image_primary"]."""
        return [] if self.cameras is None else self.cameras.keys

    def set_cameras(
        self,
        cameras: Mapping[str, str] | None,
        image_size: Sequence[int] = (84, 84),
        render: Mapping[str, Any] | None = None,
    ) -> None:
        """Choose the rendered views (observation key -> MetaWorld camera) before `connect()`.

        render: {"fast", "samples"} overrides (a served image policy's own rendering settings).
        """
        if self._sim is not None:
            raise DatamilError("SimArm cameras are set before connect(); close() it first")
        render = dict(render or {})
        self.render_fast = bool(render.get("fast", self.render_fast))
        self.render_samples = int(render.get("samples", self.render_samples))
        self.cameras = None
        if cameras:
            from datamil.sim_tasks.render import CameraConfig

            self.cameras = CameraConfig.of(
                dict(cameras), tuple(image_size), self.render_fast, self.render_samples
            )

    def connect(self) -> None:
        """Build the env (MetaWorld imports here, like a vendor SDK would); with cameras, in a worker."""
        from datamil.real_robot.sim_worker import EnvProcess, SimEnv
        from datamil.sim_tasks import EnvSpec

        if self._sim is None:
            make = SimEnv if self.cameras is None else EnvProcess
            self._sim = make(EnvSpec(self.task, self.seed, self.stream, self.max_env_steps, self.cameras))
            self.episode = -1

    def _require_sim(self) -> Any:
        if self._sim is None:
            raise DatamilError("SimArm is not connected; call connect() first")
        return self._sim

    def home(self) -> Observation:
        self.episode = self._require_sim().reset()
        return self.observe()

    def observe(self) -> Observation:
        """The state, the success signal and, with cameras, frames rendered now (the camera read)."""
        if self.episode < 0:
            return self.home()
        state, success, frames = self._require_sim().observe()
        state = np.asarray(state, np.float32)
        return {
            STATE: state,
            EE_POSE: state[:3].astype(np.float64),
            GRIPPER: float(state[3]),
            TIMESTAMP: time.time(),
            SUCCESS: success,
            **frames,
        }

    def apply(self, action: np.ndarray) -> None:
        """One env step; with cameras it is sent to the worker and this returns at once."""
        self._require_sim().step(np.asarray(action, np.float64))

    def close(self) -> None:
        if self._sim is not None:
            self._sim.close()
            self._sim = None

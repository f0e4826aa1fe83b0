"""Headless camera frames of a MuJoCo scene: the image observations of generated data and evaluation.

One `mujoco.Renderer` per env renders every configured camera at one size. Measured on 2 CPU cores
with Mesa's software EGL (`benchmarks/image_pipeline.py`): an 84x84 frame costs ~185 ms with the
default scene and ~20 ms with shadows, reflections and the skybox off and no shadow map. Those
savings are on by default (`fast=True`): learning does not need soft shadows, and rendering
dominates the cost of image data and image evaluation (a physics step is < 1 ms).

Cameras whose up axis points down in the world (MetaWorld's `corner*` views are defined that way)
give upside-down pictures; frames are rotated 180 degrees when the camera's up vector has a negative
world z, decided from the camera pose, not from its name.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from datamil.errors import DatamilError, UnknownNameError

DEFAULT_SIZE = (84, 84)  # (H, W); 84 x 84 is the usual size of image-based control (DrQ, robomimic)


@dataclass(frozen=True)
class CameraConfig:
    """Which cameras become which observation keys, at which size.

    cameras: observation key -> camera name, e.g. {"image_primary": "corner"}; keys must start with
    "image". size: (H, W) of every frame. fast: turn off shadows, reflections and the skybox.
    samples: multisample anti-aliasing of the offscreen buffer (MuJoCo's default is 4). 0 by default:
    on the software renderer multisampling is about 2/3 of a fast frame's cost, and 84 x 84 control
    does not need smooth edges. Data and evaluation must render alike, so it is part of the data key.
    """

    cameras: tuple[tuple[str, str], ...] = (("image_primary", "corner"),)
    size: tuple[int, int] = DEFAULT_SIZE
    fast: bool = True
    samples: int = 0

    @classmethod
    def of(
        cls,
        cameras: Mapping[str, str] | None,
        size: tuple[int, int] | list[int] = DEFAULT_SIZE,
        fast: bool = True,
        samples: int = 0,
    ) -> CameraConfig | None:
        """A config from a plain mapping (as in YAML); None or an empty mapping means no images."""
        if not cameras:
            return None
        config = cls(
            tuple(sorted(dict(cameras).items())), (int(size[0]), int(size[1])), bool(fast), int(samples)
        )
        config.check()
        return config

    @property
    def keys(self) -> list[str]:
        return [key for key, _ in self.cameras]

    def check(self) -> None:
        """One-line DatamilError for keys that are not image keys or sizes that are not positive."""
        for key, _ in self.cameras:
            if not key.startswith("image"):
                raise DatamilError(
                    f"camera observation key {key!r} must start with 'image' (e.g. image_primary)"
                )
        if min(self.size) <= 0:
            raise DatamilError(f"image size {self.size} must be positive (H, W), e.g. [84, 84]")
        if self.samples < 0:
            raise DatamilError(
                f"render samples {self.samples} must be >= 0 (0 = no multisampling, 4 = MuJoCo's)"
            )

    def to_dict(self) -> dict[str, Any]:
        return {
            "cameras": dict(self.cameras),
            "size": list(self.size),
            "fast": self.fast,
            "samples": self.samples,
        }


_FAST_OFF = ("mjRND_SHADOW", "mjRND_REFLECTION", "mjRND_SKYBOX")


class FrameRenderer:
    """Renders the configured cameras of one (model, data) pair; close it (or use `with`) when done.

    An EGL context left to the garbage collector prints tracebacks at interpreter exit, hence the
    explicit close.
    """

    def __init__(self, model: Any, config: CameraConfig) -> None:
        import mujoco

        self._mujoco = mujoco
        self.config = config
        self.camera_ids = {key: camera_id(model, name) for key, name in config.cameras}
        height, width = config.size
        _fit_offscreen_buffer(model, height, width)
        if config.fast:
            model.vis.quality.shadowsize = 0
        model.vis.quality.offsamples = config.samples  # read when the GL context is made
        self._renderer: Any = mujoco.Renderer(model, height, width)
        self._flags = [getattr(mujoco.mjtRndFlag, name) for name in _FAST_OFF] if config.fast else []

    def render(self, data: Any) -> dict[str, np.ndarray]:
        """{key: (H, W, 3) uint8} for every configured camera, upright."""
        if self._renderer is None:
            raise DatamilError("this FrameRenderer was closed; build a new one")
        frames = {}
        for key, cam in self.camera_ids.items():
            self._renderer.update_scene(data, camera=cam)
            for flag in self._flags:  # update_scene resets the scene flags each time
                self._renderer.scene.flags[flag] = 0
            frame = self._renderer.render()
            frames[key] = np.ascontiguousarray(frame[::-1, ::-1]) if _upside_down(data, cam) else frame
        return frames

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None

    def __enter__(self) -> FrameRenderer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown: the GL library may be gone already
            pass


def camera_id(model: Any, name: str) -> int:
    """Index of camera `name`; an unknown name lists the model's cameras."""
    names = [model.camera(i).name for i in range(model.ncam)]
    if name not in names:
        raise UnknownNameError("camera", name, names)
    return names.index(name)


def _fit_offscreen_buffer(model: Any, height: int, width: int) -> None:
    """Grow the model's offscreen framebuffer when the frame is larger (MuJoCo's default is 640x480)."""
    model.vis.global_.offheight = max(int(model.vis.global_.offheight), height)
    model.vis.global_.offwidth = max(int(model.vis.global_.offwidth), width)


def _upside_down(data: Any, cam: int) -> bool:
    """True when the camera's image-up axis (column 1 of its world rotation) points below the horizon."""
    return float(np.asarray(data.cam_xmat[cam]).reshape(3, 3)[2, 1]) < 0.0


@dataclass
class EnvFrames:
    """An env plus its renderer: `frames()` gives the current images of the env's simulation state."""

    env: Any
    config: CameraConfig
    renderer: FrameRenderer = field(init=False)

    def __post_init__(self) -> None:
        raw = self.env.unwrapped
        self.renderer = FrameRenderer(raw.model, self.config)

    def frames(self) -> dict[str, np.ndarray]:
        return self.renderer.render(self.env.unwrapped.data)

    def close(self) -> None:
        self.renderer.close()


def measure_render_fps(
    task: str,
    fast: bool,
    frames: int = 100,
    size: tuple[int, int] = DEFAULT_SIZE,
    camera: str = "corner",
    samples: int = 0,
) -> float:
    """Frames per second of one renderer on one core, warm (5 frames first), env state fixed."""
    from datamil.sim_tasks.suites import make_env

    env = make_env(task, 0)
    env.reset()
    config = CameraConfig(((("image_primary", camera)),), size, fast, samples)
    with FrameRenderer(env.unwrapped.model, config) as renderer:
        for _ in range(5):
            renderer.render(env.unwrapped.data)
        start = time.perf_counter()
        for _ in range(frames):
            renderer.render(env.unwrapped.data)
        rate = frames / (time.perf_counter() - start)
    env.close()
    return rate

"""Cameras for real arms: Intel RealSense through `pyrealsense2` where present, else OpenCV.

Both SDKs are imported in `open()`, never at module import. A camera gives one (H, W, 3) uint8 RGB frame
per read; drivers put it in the observation as `image_<name>`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from datamil.data.schema import IMAGE_PREFIX
from datamil.errors import DatamilError

KINDS = ("auto", "realsense", "opencv")


@dataclass
class CameraConfig:
    """One camera: `device` is a RealSense serial number or an OpenCV index / path."""

    name: str = "primary"  # observation key becomes image_<name>
    kind: str = "auto"  # auto | realsense | opencv
    device: str = ""  # serial (realsense) or index / path (opencv); "" = the first one found
    width: int = 640
    height: int = 480
    fps: int = 30

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise DatamilError(f"camera kind {self.kind!r} must be one of {KINDS}")


class Camera:
    """A thin wrapper: open(), read() -> (H, W, 3) uint8 RGB, close()."""

    def __init__(self, cfg: CameraConfig) -> None:
        self.cfg = cfg
        self.key = f"{IMAGE_PREFIX}_{cfg.name}"
        self._device: Any = None
        self._read: Any = None

    def open(self) -> None:
        kind = self.cfg.kind
        if kind in ("auto", "realsense"):
            try:
                self._device, self._read = _open_realsense(self.cfg)
                return
            except ImportError:
                if kind == "realsense":
                    raise DatamilError(
                        "camera kind realsense needs pyrealsense2; pip install pyrealsense2"
                    ) from None
        self._device, self._read = _open_opencv(self.cfg)

    def read(self) -> np.ndarray:
        return self._read()

    def close(self) -> None:
        if self._device is not None:
            (getattr(self._device, "stop", None) or self._device.release)()
            self._device = None


def _open_realsense(cfg: CameraConfig) -> tuple[Any, Any]:
    import pyrealsense2 as rs

    pipeline, config = rs.pipeline(), rs.config()
    if cfg.device:
        config.enable_device(cfg.device)
    config.enable_stream(rs.stream.color, cfg.width, cfg.height, rs.format.rgb8, cfg.fps)
    pipeline.start(config)

    def read() -> np.ndarray:
        return np.asanyarray(pipeline.wait_for_frames().get_color_frame().get_data()).copy()

    return pipeline, read


def _open_opencv(cfg: CameraConfig) -> tuple[Any, Any]:
    try:
        import cv2
    except ImportError:
        raise DatamilError(
            "cameras need pyrealsense2 or OpenCV; pip install opencv-python-headless"
        ) from None
    device = cfg.device or "0"
    capture = cv2.VideoCapture(int(device) if device.isdigit() else device)
    capture.set(cv2.CAP_PROP_FRAME_WIDTH, cfg.width)
    capture.set(cv2.CAP_PROP_FRAME_HEIGHT, cfg.height)
    if not capture.isOpened():
        raise DatamilError(f"cannot open camera {cfg.device or 0!r} with OpenCV; check the device")

    def read() -> np.ndarray:
        ok, frame = capture.read()
        if not ok:
            raise DatamilError(f"camera {cfg.name!r} returned no frame")
        return cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)

    return capture, read


class CameraSet:
    """All cameras of a robot, opened and read together."""

    def __init__(self, configs: list[CameraConfig | dict] | None = None) -> None:
        self.cameras = [
            Camera(c if isinstance(c, CameraConfig) else CameraConfig(**c)) for c in configs or []
        ]

    @property
    def keys(self) -> list[str]:
        """Observation keys of the cameras, e.g. ["image_primary"]."""
        return [camera.key for camera in self.cameras]

    def open(self) -> None:
        for camera in self.cameras:
            camera.open()

    def read(self) -> dict[str, np.ndarray]:
        return {camera.key: camera.read() for camera in self.cameras}

    def close(self) -> None:
        for camera in self.cameras:
            camera.close()

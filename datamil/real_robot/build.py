"""Config -> objects for the entry points (Hydra stays up here; the library takes plain objects)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from datamil.data.schema import IMAGE_PREFIX, is_image_key
from datamil.errors import DatamilError
from datamil.real_robot.cameras import CameraSet
from datamil.real_robot.control import LoopConfig
from datamil.real_robot.recording import SessionInfo, SessionRecorder
from datamil.real_robot.robot import Robot
from datamil.real_robot.safety import SafetyLayer, SafetyLimits


def build_robot(cfg: DictConfig) -> Robot:
    """The driver named by `robot=`; constructing it validates settings and touches no hardware."""
    from hydra.utils import instantiate

    return instantiate(cfg.robot)


def build_safety(cfg: DictConfig, robot: Robot) -> SafetyLayer:
    limits = OmegaConf.to_container(cfg.safety, resolve=True)
    return SafetyLayer(SafetyLimits(**{k: tuple(v) if isinstance(v, list) else v for k, v in limits.items()}),
                       robot.action_space)  # fmt: skip


def build_loop(cfg: DictConfig) -> LoopConfig:
    return LoopConfig(dry_run=bool(cfg.dry_run), **OmegaConf.to_container(cfg.control, resolve=True))


def build_recorder(cfg: DictConfig, operator: str) -> SessionRecorder | None:
    rec = cfg.recording
    if not rec.enabled:
        return None
    robot_name = str(cfg.robot.get("_target_", "")).rsplit(".", 1)[-1]
    info = SessionInfo(dataset=rec.dataset, task=str(cfg.task), instruction=rec.instruction,
                       robot=robot_name, operator=operator)  # fmt: skip
    recorder = SessionRecorder(Path(rec.root), info, fsync_every=rec.fsync_every)
    for path in recorder.recovered:
        logging.getLogger(__name__).warning("recovered a crashed episode as %s", path)
    return recorder


def match_cameras(robot: Robot, meta: dict) -> None:
    """Make sure the robot gives the served policy the camera frames it reads, before `connect()`.

    A SimArm without cameras renders the policy's own views (its `cameras`, image size and rendering
    settings); any other
    robot must list them in `robot.cameras`, or this says which are missing in one line.
    """
    needed = [k for k in meta.get("obs_keys", []) if is_image_key(k)]
    if not needed:
        return
    if hasattr(robot, "set_cameras") and not robot.camera_keys:
        views = meta.get("cameras") or {}
        if missing := [k for k in needed if k not in views]:
            raise DatamilError(f"the policy reads {missing} but names no simulator camera for them; "
                               "set robot.cameras={image_primary: corner}")  # fmt: skip
        size = meta.get("image_sizes", {}).get(needed[0], (84, 84))
        robot.set_cameras({k: views[k] for k in needed}, size, meta.get("render"))
    provided = camera_keys(robot)
    if provided is not None and (missing := [k for k in needed if k not in provided]):
        names = [k[len(IMAGE_PREFIX) + 1 :] for k in missing]
        fix = (f"add {missing[0]}: <MetaWorld camera> to robot.cameras" if hasattr(robot, "set_cameras")
               else f"add cameras named {names} to robot.cameras in datamil/configs/robot/<arm>.yaml")  # fmt: skip
        raise DatamilError(f"the policy reads camera frames {missing} but the robot gives {provided}; {fix}")


def camera_keys(robot: Robot) -> list[str] | None:
    """The image observation keys a robot provides; None when the driver does not say."""
    if hasattr(robot, "camera_keys"):
        return list(robot.camera_keys)
    cameras = getattr(robot, "cameras", None)
    return cameras.keys if isinstance(cameras, CameraSet) else None


def settings(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config, for the session log."""
    return OmegaConf.to_container(cfg, resolve=True)

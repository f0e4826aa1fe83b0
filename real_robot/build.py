"""Config -> objects for the entry points (Hydra stays up here; the library takes plain objects)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from real_robot.control import LoopConfig
from real_robot.recording import SessionInfo, SessionRecorder
from real_robot.robot import Robot
from real_robot.safety import SafetyLayer, SafetyLimits


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


def settings(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config, for the session log."""
    return OmegaConf.to_container(cfg, resolve=True)

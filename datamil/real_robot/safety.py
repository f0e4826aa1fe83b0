"""The safety layer between every action and every robot, and the watchdog that stops a silent loop.

Why here and not in the drivers: one implementation, tested against SimArm, guards every arm. Order of
checks on a proposed action (A,):
    1. reject (hold position, report) if its shape is wrong, any value is NaN/inf, or any |value| exceeds
       `reject_above` (a broken policy, not an aggressive one);
    2. limit the per-step translation (norm, meters) and rotation (norm, radians; per joint in joint mode);
    3. clamp the commanded end-effector target into the workspace box;
    4. clamp the gripper command into its range.
Every intervention is a bit in `Intervention`; the loop records the bits of every step with the episode.
"""

from __future__ import annotations

import enum
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from datamil.real_robot.robot import EE_POSE, ActionSpace, Observation

JOINTS = "joints"  # observation key of joint positions, needed by mode="joint" robots


class Intervention(enum.IntFlag):
    """What the safety layer or the loop did to one step (bits, so one int per step on disk)."""

    CLAMP_WORKSPACE = 1
    CLAMP_TRANSLATION = 2
    CLAMP_ROTATION = 4
    CLAMP_GRIPPER = 8
    REJECT_NONFINITE = 16
    REJECT_SHAPE = 32
    REJECT_MAGNITUDE = 64
    HOLD_NO_ACTION = 128  # no fresh action this step (server slow, dead or reconnecting)
    STOP_WATCHDOG = 256
    STOP_OPERATOR = 512
    DRY_RUN = 1024


REJECTED = Intervention.REJECT_NONFINITE | Intervention.REJECT_SHAPE | Intervention.REJECT_MAGNITUDE


def flag_names(flags: int) -> list[str]:
    """Names of the bits set in `flags`, lower case, e.g. ["clamp_workspace", "dry_run"]."""
    return [f.name.lower() for f in Intervention if f & flags]


@dataclass(frozen=True)
class SafetyLimits:
    """Limits in physical units (meters, radians) in the robot's base frame; see datamil/configs/robot/*.yaml."""

    workspace_low: tuple[float, float, float] = (-np.inf, -np.inf, -np.inf)
    workspace_high: tuple[float, float, float] = (np.inf, np.inf, np.inf)
    max_translation: float = 0.02  # meters per step (norm of the xyz change)
    max_rotation: float = 0.1  # radians per step (norm of the rpy change; per joint in joint mode)
    gripper_range: tuple[float, float] = (0.0, 1.0)
    reject_above: float = 10.0  # any |component| above this (action units) is garbage: reject, don't clamp
    watchdog_deadline_s: float = 0.2  # wait at most this long for a fresh action, then hold
    watchdog_stop_s: float = 1.0  # no fresh action for this long: stop the episode

    def __post_init__(self) -> None:
        from datamil.errors import DatamilError

        low, high = np.asarray(self.workspace_low, float), np.asarray(self.workspace_high, float)
        if low.shape != (3,) or high.shape != (3,) or np.any(low >= high):
            raise DatamilError(f"safety workspace_low {low} must be below workspace_high {high} on x, y, z")
        if min(self.max_translation, self.max_rotation, self.reject_above) <= 0:
            raise DatamilError("safety max_translation, max_rotation and reject_above must be positive")
        if self.gripper_range[0] > self.gripper_range[1]:
            raise DatamilError(f"safety gripper_range {self.gripper_range} must be [low, high]")
        if not 0 < self.watchdog_deadline_s <= self.watchdog_stop_s:
            raise DatamilError("safety needs 0 < watchdog_deadline_s <= watchdog_stop_s")


@dataclass
class SafetyDecision:
    """The action to send (the hold action when rejected), what was done, and the raw proposal."""

    action: np.ndarray
    flags: Intervention
    proposed: np.ndarray  # (A,) float32; NaN when the proposal had the wrong shape


class SafetyLayer:
    """Checks actions against `SafetyLimits` for one robot; counts interventions per episode."""

    def __init__(self, limits: SafetyLimits, space: ActionSpace) -> None:
        self.limits, self.space = limits, space
        self.counts: Counter[str] = Counter()
        self._gripper: float | None = None

    def reset(self) -> None:
        """Start an episode: clear the counts and the remembered gripper command."""
        self.counts.clear()
        self._gripper = None

    def record(self, flags: int) -> None:
        self.counts.update(flag_names(flags))

    def hold(self, obs: Observation) -> np.ndarray:
        """The action that keeps the arm where it is, with the last gripper command."""
        s, action = self.space, np.zeros(self.space.dim, np.float64)
        if s.mode == "absolute" and s.translation is not None:
            action[slice(*s.translation)] = np.asarray(obs[EE_POSE])[:3] / s.translation_scale
        if s.mode == "absolute" and s.rotation is not None and np.size(obs[EE_POSE]) == 6:
            action[slice(*s.rotation)] = np.asarray(obs[EE_POSE])[3:6] / s.rotation_scale
        if s.mode == "joint" and s.rotation is not None:
            action[slice(*s.rotation)] = np.asarray(obs[JOINTS]) / s.rotation_scale
        if s.gripper is not None:
            action[s.gripper] = s.gripper_open if self._gripper is None else self._gripper
        return action

    def check(self, action: object, obs: Observation) -> SafetyDecision:
        """The safe version of `action` given the current observation (never raises on bad actions)."""
        proposed, flags = self._validate(action)
        if flags & REJECTED:
            return SafetyDecision(self.hold(obs), flags, proposed)
        safe = proposed.astype(np.float64)
        flags |= self._limit_translation(safe, obs)
        flags |= self._limit_rotation(safe, obs)
        flags |= self._limit_gripper(safe)
        if self.space.gripper is not None:
            self._gripper = float(safe[self.space.gripper])
        return SafetyDecision(safe, flags, proposed)

    def _validate(self, action: object) -> tuple[np.ndarray, Intervention]:
        nan = np.full(self.space.dim, np.nan, np.float32)
        try:
            proposed = np.asarray(action, np.float64)
        except (TypeError, ValueError):
            return nan, Intervention.REJECT_SHAPE
        if proposed.shape != (self.space.dim,):
            return nan, Intervention.REJECT_SHAPE
        if not np.all(np.isfinite(proposed)):
            return proposed.astype(np.float32), Intervention.REJECT_NONFINITE
        if np.max(np.abs(proposed)) > self.limits.reject_above:
            return proposed.astype(np.float32), Intervention.REJECT_MAGNITUDE
        return proposed.astype(np.float32), Intervention(0)

    def _limit_translation(self, a: np.ndarray, obs: Observation) -> Intervention:
        s, lim = self.space, self.limits
        if s.translation is None or s.mode == "joint":
            return Intervention(0)
        part, pos = slice(*s.translation), np.asarray(obs[EE_POSE], np.float64)[:3]
        target = a[part] * s.translation_scale + (pos if s.mode == "delta" else 0.0)
        boxed = np.clip(target, lim.workspace_low, lim.workspace_high)
        flags = Intervention.CLAMP_WORKSPACE if not np.allclose(boxed, target) else Intervention(0)
        step, clipped = _clip_norm(boxed - pos, lim.max_translation)
        flags |= Intervention.CLAMP_TRANSLATION if clipped else Intervention(0)
        a[part] = (step if s.mode == "delta" else pos + step) / s.translation_scale
        return flags

    def _limit_rotation(self, a: np.ndarray, obs: Observation) -> Intervention:
        s, lim = self.space, self.limits
        if s.rotation is None:
            return Intervention(0)
        part = slice(*s.rotation)
        if s.mode == "delta":
            step, clipped = _clip_norm(a[part] * s.rotation_scale, lim.max_rotation)
            a[part] = step / s.rotation_scale
        elif s.mode == "joint":
            now = np.asarray(obs[JOINTS], np.float64)
            step = np.clip(a[part] * s.rotation_scale - now, -lim.max_rotation, lim.max_rotation)
            clipped = not np.allclose(now + step, a[part] * s.rotation_scale)
            a[part] = (now + step) / s.rotation_scale
        else:
            now = np.asarray(obs[EE_POSE], np.float64)[3:6]
            diff = (a[part] * s.rotation_scale - now + np.pi) % (2 * np.pi) - np.pi
            step, clipped = _clip_norm(diff, lim.max_rotation)
            a[part] = (now + step) / s.rotation_scale
        return Intervention.CLAMP_ROTATION if clipped else Intervention(0)

    def _limit_gripper(self, a: np.ndarray) -> Intervention:
        if self.space.gripper is None:
            return Intervention(0)
        low, high = self.limits.gripper_range
        value = a[self.space.gripper]
        a[self.space.gripper] = min(max(value, low), high)
        return Intervention.CLAMP_GRIPPER if a[self.space.gripper] != value else Intervention(0)


def _clip_norm(v: np.ndarray, max_norm: float) -> tuple[np.ndarray, bool]:
    """v scaled down to norm max_norm if longer (direction kept); whether it was."""
    norm = float(np.linalg.norm(v))
    if norm <= max_norm * (1 + 1e-9):
        return v, False
    return v * (max_norm / norm), True


class Watchdog:
    """Tracks the age of the last fresh action: past `stop_s` the loop must stop (the deadline holds)."""

    def __init__(self, deadline_s: float, stop_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.deadline_s, self.stop_s, self.clock = deadline_s, stop_s, clock
        self.last = clock()

    def reset(self) -> None:
        self.last = self.clock()

    def feed(self) -> None:
        """A fresh action arrived."""
        self.last = self.clock()

    def silent_for(self) -> float:
        return self.clock() - self.last

    def expired(self) -> bool:
        return self.silent_for() > self.stop_s

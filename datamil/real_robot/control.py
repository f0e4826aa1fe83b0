"""The fixed-rate control loop: observation -> action source -> safety -> robot, with per-step timing.

An action source is anything with `next(obs, timeout) -> (A,) | None` and `reset(seed)`: the policy
server (chunking.PolicySource) or a teleoperator (operators.py). None means "nothing fresh": the step
holds, and once the watchdog has heard nothing for `watchdog_stop_s` the episode stops.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from datamil.errors import DatamilError
from datamil.real_robot.robot import SUCCESS, TIMESTAMP, Observation, Robot
from datamil.real_robot.safety import Intervention, SafetyDecision, SafetyLayer, Watchdog

log = logging.getLogger(__name__)


class ActionSource(Protocol):
    """Where actions come from: a policy client or an operator."""

    def reset(self, seed: int) -> None: ...

    def next(self, obs: Observation, timeout: float) -> np.ndarray | None: ...


@dataclass(frozen=True)
class LoopConfig:
    """How an episode runs; see datamil/configs/run.yaml for the meaning of each field."""

    rate_hz: float = 15.0
    max_steps: int = 300
    end_on_success: bool = False
    dry_run: bool = False
    log_steps: bool = False

    def __post_init__(self) -> None:
        if self.rate_hz <= 0 or self.max_steps < 1:
            raise DatamilError(
                f"control rate_hz={self.rate_hz} and max_steps={self.max_steps} must be positive"
            )


class Rate:
    """Sleeps until the next tick of a fixed-rate schedule; a late step starts the next one at once
    (no burst of catch-up steps) and is counted as an overrun."""

    def __init__(self, hz: float) -> None:
        self.period = 1.0 / hz
        self.overruns = 0
        self._next = time.perf_counter() + self.period

    def sleep(self) -> None:
        delay = self._next - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
            self._next += self.period
        else:
            self.overruns += 1
            self._next = time.perf_counter() + self.period


@dataclass
class StepRecord:
    """One control step as executed, for the recorder and the timing log."""

    obs: Observation
    action: np.ndarray  # (A,) what was sent (or would have been, in dry run)
    proposed: np.ndarray  # (A,) what the source proposed (NaN when none or malformed)
    flags: int  # Intervention bits
    latency_ms: float  # observation read -> action sent
    source_ms: float  # time spent waiting for the action source (the server round trip)


@dataclass
class EpisodeResult:
    """How an episode ended, what the safety layer did, and how fast the loop ran."""

    steps: int
    end_reason: str  # max_steps | success | watchdog | operator | operator_done
    success_signal: bool | None  # the robot's own success signal (SimArm), None for real arms
    interventions: dict[str, int]
    latency_ms: np.ndarray = field(repr=False)
    step_times: np.ndarray = field(repr=False)  # (T,) perf_counter at each step start
    overruns: int = 0

    def timing(self) -> dict[str, float]:
        """Loop Hz and p50/p99 step latency in ms."""
        hz = (
            (len(self.step_times) - 1) / (self.step_times[-1] - self.step_times[0]) if self.steps > 1 else 0.0
        )
        p50, p99 = np.percentile(self.latency_ms, [50, 99]) if self.steps else (np.nan, np.nan)
        return {"hz": float(hz), "latency_p50_ms": float(p50), "latency_p99_ms": float(p99)}


def _decide(
    source: ActionSource, safety: SafetyLayer, watchdog: Watchdog, obs: Observation
) -> SafetyDecision:
    action = source.next(obs, watchdog.deadline_s)
    if action is None:
        nan = np.full(safety.space.dim, np.nan, np.float32)
        return SafetyDecision(safety.hold(obs), Intervention.HOLD_NO_ACTION, nan)
    watchdog.feed()
    return safety.check(action, obs)


def _stop_reason(watchdog: Watchdog, stop: threading.Event, source: ActionSource) -> tuple[str | None, int]:
    if stop.is_set():
        return "operator", Intervention.STOP_OPERATOR
    if watchdog.expired():
        return "watchdog", Intervention.STOP_WATCHDOG
    if getattr(source, "done", False):
        return "operator_done", 0
    return None, 0


def run_episode(
    robot: Robot,
    source: ActionSource,
    safety: SafetyLayer,
    cfg: LoopConfig,
    stop: threading.Event,
    on_step: Callable[[StepRecord], None] = lambda record: None,
) -> EpisodeResult:
    """Run one episode from the robot's current pose until max_steps, success, a stop or the watchdog."""
    watchdog = Watchdog(safety.limits.watchdog_deadline_s, safety.limits.watchdog_stop_s)
    rate, latencies, starts, reason, success = Rate(cfg.rate_hz), [], [], "max_steps", None
    for step in range(cfg.max_steps):
        start = time.perf_counter()
        obs = robot.observe()
        success = obs.get(SUCCESS, success)
        if cfg.end_on_success and success:
            reason = "success"
            break
        decision = _decide(source, safety, watchdog, obs)
        waited = time.perf_counter() - start
        stopped, stop_flag = _stop_reason(watchdog, stop, source)
        if stopped:
            decision.action = safety.hold(obs)
        flags = int(decision.flags) | stop_flag | (Intervention.DRY_RUN if cfg.dry_run else 0)
        _send(robot, decision.action, cfg.dry_run, step)
        latency = (time.perf_counter() - start) * 1e3
        safety.record(flags)
        on_step(StepRecord(obs, decision.action, decision.proposed, flags, latency, waited * 1e3))
        latencies.append(latency)
        starts.append(start)
        if cfg.log_steps:
            log.info("step %d t=%.3f latency %.1f ms flags %d", step, obs[TIMESTAMP], latency, flags)
        if stopped:
            reason = stopped
            break
        rate.sleep()
    if reason != "success":
        success = robot.observe().get(SUCCESS, success)  # the effect of the last action
    return EpisodeResult(
        len(latencies),
        reason,
        success,
        dict(safety.counts),
        np.asarray(latencies),
        np.asarray(starts),
        rate.overruns,
    )


def _send(robot: Robot, action: np.ndarray, dry_run: bool, step: int) -> None:
    """Apply, or in dry run print what would be sent (and send nothing)."""
    if dry_run:
        print(f"[dry run] step {step}: {np.array2string(np.asarray(action), precision=4)}", flush=True)
    else:
        robot.apply(action)

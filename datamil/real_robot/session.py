"""A session: episodes run back to back on one robot, each labeled and recorded, none ever lost.

`run_session` is what both entry points call (`datamil.real_robot.run` with the policy server as the action
source, `datamil.real_robot.teleop` with an operator). Whatever ends it (the stop key, an exception, Ctrl-C),
the episode in progress is written as a partial episode and the robot is closed.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from datamil.real_robot.control import ActionSource, EpisodeResult, LoopConfig, run_episode
from datamil.real_robot.keys import KeyEvents
from datamil.real_robot.recording import SessionRecorder
from datamil.real_robot.robot import Robot, check_observation
from datamil.real_robot.safety import SafetyLayer

log = logging.getLogger(__name__)
LABELS = ("prompt", "sim", "none")

Labeler = Callable[[EpisodeResult], bool | None]


def make_labeler(kind: str, keys: KeyEvents | None = None) -> Labeler:
    """How an episode's success label is decided: the operator's key press, the sim's signal, or nobody."""
    from datamil.errors import DatamilError

    if kind == "sim":
        return lambda result: result.success_signal
    if kind == "none":
        return lambda result: None
    if kind != "prompt":
        raise DatamilError(f"label={kind!r} must be one of {LABELS}")

    def prompt(result: EpisodeResult) -> bool | None:
        print(f"episode ended ({result.end_reason}); success? press y / n (u = unknown)", flush=True)
        if keys is None or keys.backend == "none":
            answer = input("success? [y/n/u] ").strip().lower()[:1]
        else:
            answer = keys.wait(("y", "n", "u"))
        return {"y": True, "n": False}.get(answer or "u")

    return prompt


@dataclass
class SessionSummary:
    """Per-episode results and where each episode went on disk."""

    results: list[EpisodeResult] = field(default_factory=list)
    labels: list[bool | None] = field(default_factory=list)
    paths: list = field(default_factory=list)


def run_session(
    robot: Robot,
    source: ActionSource,
    safety: SafetyLayer,
    recorder: SessionRecorder | None,
    cfg: LoopConfig,
    episodes: int,
    label: Labeler,
    stop: threading.Event | None = None,
    seed: int = 0,
    label_source: str = "",
) -> SessionSummary:
    """Run up to `episodes` episodes (fewer if the operator or the watchdog stops); record each one."""
    stop = stop or threading.Event()
    summary = SessionSummary()
    robot.connect()
    try:
        for index in range(episodes):
            if stop.is_set():
                break
            result = _one_episode(robot, source, safety, recorder, cfg, stop, seed + index)
            success = label(result)
            summary.results.append(result)
            summary.labels.append(success)
            if recorder is not None:
                summary.paths.append(recorder.end(success, result, label_source))
            log.info("episode %d: %s, %d steps, success %s, %s, interventions %s", index, result.end_reason,
                     result.steps, success, _timing_text(result), result.interventions)  # fmt: skip
            if result.end_reason == "watchdog":
                break
    except BaseException as e:
        if recorder is not None and recorder.recording:
            summary.paths.append(recorder.abort(f"aborted: {type(e).__name__}: {e}"))
        raise
    finally:
        robot.close()
    return summary


def _one_episode(
    robot: Robot,
    source: ActionSource,
    safety: SafetyLayer,
    recorder: SessionRecorder | None,
    cfg: LoopConfig,
    stop: threading.Event,
    seed: int,
) -> EpisodeResult:
    check_observation(robot.home(), robot.action_space)
    safety.reset()
    source.reset(seed)
    on_step = (lambda record: None) if recorder is None else recorder.step
    if recorder is not None:
        recorder.begin(
            getattr(source, "checkpoint_id", None), seed=seed, rate_hz=cfg.rate_hz, dry_run=cfg.dry_run
        )
    return run_episode(robot, source, safety, cfg, stop, on_step)


def _timing_text(result: EpisodeResult) -> str:
    t = result.timing()
    return f"{t['hz']:.1f} Hz, latency p50 {t['latency_p50_ms']:.1f} ms p99 {t['latency_p99_ms']:.1f} ms"

"""Evaluate a policy checkpoint in simulation and write its results (JSON + CSV) atomically.

Optionally film the first episodes (`datamil.video`): after the numbers, in a separate process, so the
evaluation runs at full speed and its results are written even where no GL backend exists.
"""

from __future__ import annotations

import csv
import functools
import io
import json
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from datamil.checkpoint import load_policy
from datamil.device import resolve_device
from datamil.io import atomic_write_text
from datamil.sim_tasks.rollout import EvalResult, evaluate_policy
from datamil.video import VideoConfig, VideoUnavailable, record_video

SUMMARY_FIELDS = (
    "task",
    "seed",
    "n_episodes",
    "success_rate",
    "ci_low",
    "ci_high",
    "mean_length",
    "mean_return",
)


def evaluate_checkpoint(
    checkpoint: str | Path,
    task: str | None = None,
    n_episodes: int = 50,
    seed: int = 0,
    max_steps: int = 500,
    n_envs: int = 10,
    workers: int = 1,
    execute_steps: int | None = None,
    progress: bool = True,
    device: str | torch.device = "cpu",
) -> EvalResult:
    """Roll out the checkpoint on its task (or `task`, with a warning if it differs) for seeded episodes.

    The policy runs on `device`; each step's observations are moved there and its actions back."""
    loaded = load_policy(checkpoint)
    task = task or loaded.task
    if loaded.task and task != loaded.task:
        warnings.warn(f"checkpoint was trained for {loaded.task!r}, evaluating it on {task!r}", stacklevel=2)
    policy = loaded.policy.to(resolve_device(device))
    if execute_steps is None:
        execute_steps = int(policy.n_action_steps)
    act = functools.partial(policy.act, None)
    return evaluate_policy(
        act,
        task,
        n_episodes,
        seed,
        max_steps,
        n_envs=n_envs,
        workers=workers,
        execute_steps=execute_steps,
        progress=progress,
    )


def write_results(
    result: EvalResult, run_dir: Path, checkpoint: str | Path, video: dict[str, Any] | None = None
) -> tuple[Path, Path]:
    """results.json (summary + per-episode outcomes, + the video section) and results.csv (one summary row)."""
    summary = {**result.to_dict(), "checkpoint": str(checkpoint)}
    if video is not None:
        summary["video"] = video
    json_path = atomic_write_text(run_dir / "results.json", json.dumps(summary, indent=1) + "\n")
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=[*SUMMARY_FIELDS, "checkpoint"])
    writer.writeheader()
    writer.writerow({k: summary[k] for k in (*SUMMARY_FIELDS, "checkpoint")})
    return json_path, atomic_write_text(run_dir / "results.csv", buffer.getvalue())


def record_evaluation_video(
    checkpoint: str | Path,
    result: EvalResult,
    run_dir: Path,
    config: VideoConfig,
    gl_problem: str | None = None,
    device: str | torch.device = "cpu",
) -> dict[str, Any]:
    """Film the evaluation's first episodes into run_dir/videos; returns the results.json "video" section.
    The filmed re-runs use the policy on `device`, as the evaluation did.

    A missing GL backend or ffmpeg is recorded under "error" (one line naming the fix) instead of raised:
    the numbers stand without the video. Each filmed episode is a re-run of the same start state, and
    `matches_evaluation` says whether its outcome equals the evaluation's.
    """
    section: dict[str, Any] = {**config.to_dict(), "episodes": []}
    if gl_problem:
        return {**section, "error": gl_problem}
    settings = result.settings
    try:
        filmed = record_video(
            checkpoint,
            result.task,
            result.seed,
            run_dir / "videos",
            replace(config, episodes=min(config.episodes, result.n_episodes)),
            max_steps=settings["max_steps"],
            execute_steps=settings["execute_steps"],
            stream=settings["stream"],
            device=str(resolve_device(device)),
        )
    except VideoUnavailable as error:
        return {**section, "error": str(error)}
    section["episodes"] = [
        {
            "episode": f.episode,
            "path": str(f.path.relative_to(run_dir)),
            "frames": f.frames,
            "success": f.success,
            "length": f.length,
            "matches_evaluation": bool(
                f.success == result.success[f.episode] and f.length == result.length[f.episode]
            ),
        }
        for f in filmed
    ]
    return section


def video_line(section: dict[str, Any], run_dir: Path) -> str:
    """One line for the user: where the videos are, or why there are none and how to fix it."""
    if "error" in section:
        return f"video not written: {section['error']}"
    episodes = section["episodes"]
    same = sum(e["matches_evaluation"] for e in episodes)
    return (
        f"video: {len(episodes)} episode(s) in {run_dir / 'videos'} "
        f"({same}/{len(episodes)} re-runs match the evaluation's outcome)"
    )

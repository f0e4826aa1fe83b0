"""Evaluate a policy checkpoint in simulation and write its results (JSON + CSV) atomically."""

from __future__ import annotations

import csv
import functools
import io
import json
import warnings
from pathlib import Path

from datamil.checkpoint import load_policy
from datamil.io import atomic_write_text
from sim_tasks.rollout import EvalResult, evaluate_policy

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
) -> EvalResult:
    """Roll out the checkpoint on its task (or `task`, with a warning if it differs) for seeded episodes."""
    loaded = load_policy(checkpoint)
    task = task or loaded.task
    if loaded.task and task != loaded.task:
        warnings.warn(f"checkpoint was trained for {loaded.task!r}, evaluating it on {task!r}", stacklevel=2)
    policy = loaded.policy
    if execute_steps is None:
        execute_steps = int(getattr(policy, "n_action_steps", 1))
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


def write_results(result: EvalResult, run_dir: Path, checkpoint: str | Path) -> tuple[Path, Path]:
    """results.json (summary + per-episode outcomes) and results.csv (one summary row)."""
    summary = {**result.to_dict(), "checkpoint": str(checkpoint)}
    json_path = atomic_write_text(run_dir / "results.json", json.dumps(summary, indent=1) + "\n")
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=[*SUMMARY_FIELDS, "checkpoint"])
    writer.writeheader()
    writer.writerow({k: summary[k] for k in (*SUMMARY_FIELDS, "checkpoint")})
    return json_path, atomic_write_text(run_dir / "results.csv", buffer.getvalue())

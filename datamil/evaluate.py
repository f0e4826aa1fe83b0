"""`python -m datamil.evaluate checkpoint=<run>/policy.pt`: seeded rollouts of a checkpoint in MuJoCo."""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from datamil.cli import CONFIG_DIR, one_line_errors, run_dir_of, save_config
from datamil.device import resolve_device
from datamil.errors import DatamilError
from datamil.sim_tasks.evaluation import (
    evaluate_checkpoint,
    record_evaluation_video,
    video_line,
    write_results,
)
from datamil.video import VideoConfig, keep_physics_without_gl


@hydra.main(config_path=CONFIG_DIR, config_name="evaluate", version_base="1.3")
@one_line_errors
def main(cfg: DictConfig) -> None:
    if not cfg.checkpoint:
        raise DatamilError("no checkpoint given; add checkpoint=<cotrain run>/policy.pt")
    device = resolve_device(cfg.device)
    run_dir = run_dir_of()
    save_config(cfg, run_dir)
    video = VideoConfig.from_eval(cfg.eval)
    gl_problem = keep_physics_without_gl() if video.episodes else None  # before anything imports mujoco
    result = evaluate_checkpoint(
        cfg.checkpoint,
        cfg.get("task"),
        cfg.eval.n_episodes,
        cfg.seed,
        cfg.eval.max_steps,
        cfg.eval.n_envs,
        cfg.eval.workers,
        cfg.eval.execute_steps,
        device=device,
    )
    write_results(result, run_dir, cfg.checkpoint)
    low, high = result.interval
    print(
        f"{result.task}: success {result.success_rate:.1%} [{low:.1%}, {high:.1%}] over {result.n_episodes} "
        f"episodes (seed {cfg.seed}), mean length {result.mean_length:.0f}; results in {run_dir}"
    )
    if video.episodes:
        section = record_evaluation_video(cfg.checkpoint, result, run_dir, video, gl_problem, device)
        write_results(result, run_dir, cfg.checkpoint, video=section)
        print(video_line(section, run_dir), file=sys.stderr if "error" in section else sys.stdout)


if __name__ == "__main__":
    main()

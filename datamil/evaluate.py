"""`python -m datamil.evaluate checkpoint=<run>/policy.pt`: seeded rollouts of a checkpoint in MuJoCo."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from datamil.cli import CONFIG_DIR, one_line_errors, run_dir_of, save_config
from datamil.errors import DatamilError
from datamil.evaluation import evaluate_checkpoint, write_results


@hydra.main(config_path=CONFIG_DIR, config_name="evaluate", version_base="1.3")
@one_line_errors
def main(cfg: DictConfig) -> None:
    if not cfg.checkpoint:
        raise DatamilError("no checkpoint given; add checkpoint=<cotrain run>/policy.pt")
    run_dir = run_dir_of()
    save_config(cfg, run_dir)
    result = evaluate_checkpoint(
        cfg.checkpoint,
        cfg.get("task"),
        cfg.eval.n_episodes,
        cfg.seed,
        cfg.eval.max_steps,
        cfg.eval.n_envs,
        cfg.eval.workers,
        cfg.eval.execute_steps,
    )
    write_results(result, run_dir, cfg.checkpoint)
    low, high = result.interval
    print(
        f"{result.task}: success {result.success_rate:.1%} [{low:.1%}, {high:.1%}] over {result.n_episodes} "
        f"episodes (seed {cfg.seed}), mean length {result.mean_length:.0f}; results in {run_dir}"
    )


if __name__ == "__main__":
    main()

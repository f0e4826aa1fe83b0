"""`python -m datamil.cotrain +task=... selection=<selection.json>`: co-train a policy on target + selection."""

from __future__ import annotations

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig

from datamil.cli import CONFIG_DIR, one_line_errors, require_task, require_values, run_dir_of, save_config
from datamil.device import resolve_device
from datamil.logger import make_logger
from datamil.selection.selection_io import read_selection
from datamil.training.cotraining import cotrain_on_selection


def selected_ids(selection: str | None, prior_ids: list[str]) -> list[str]:
    """A selection file's ids; "all" = every prior trajectory; null/"none" = target only."""
    if selection in (None, "", "none", "target_only"):
        return []
    if selection in ("all", "all_prior"):
        return list(prior_ids)
    return read_selection(selection).selected


@hydra.main(config_path=CONFIG_DIR, config_name="cotrain", version_base="1.3")
@one_line_errors
def main(cfg: DictConfig) -> None:
    task = require_task(cfg, "python -m datamil.cotrain selection=<run>/selection.json")
    require_values(cfg)
    device = resolve_device(cfg.device)
    run_dir = run_dir_of()
    config = save_config(cfg, run_dir)
    data = instantiate(cfg.data).load(task)
    ids = selected_ids(cfg.selection, data.prior.episodes.episode_id)
    t = cfg.training
    policy = instantiate(cfg.policy)
    logger = make_logger(cfg.logger, run_dir, config)
    try:
        path, result, mixture = cotrain_on_selection(
            policy,
            data,
            ids,
            cfg.target_ratio,
            cfg.prior_ratio,
            t.batch_size,
            t.steps,
            instantiate(t.optim),
            t.seed,
            run_dir,
            config,
            logger=logger,
            checkpoint_every=t.checkpoint_every,
            log_every=t.log_every,
            device=device,
        )
    finally:
        logger.close()
    print(
        f"trained on {mixture.n_target_episodes} target + {mixture.n_prior_episodes} prior episodes; "
        f"final loss {result.losses[-t.log_every :].mean():.4f}; checkpoint: {path}"
    )


if __name__ == "__main__":
    main()

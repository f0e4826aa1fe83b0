"""`python -m datamil.select +task=metaworld/pick-place-wall`: score the prior, select, write the run."""

from __future__ import annotations

import hydra
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from datamil.cli import CONFIG_DIR, one_line_errors, require_task, require_values, run_dir_of, save_config
from datamil.device import resolve_device
from datamil.selecting import run_selection


@hydra.main(config_path=CONFIG_DIR, config_name="select", version_base="1.3")
@one_line_errors
def main(cfg: DictConfig) -> None:
    task = require_task(cfg, "python -m datamil.select")
    require_values(cfg)
    selection_cfg = instantiate(cfg.selection)  # a bad budget or percentile fails here, before any work
    device = resolve_device(cfg.device)  # so does an unknown device, or cuda without one
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    run_dir = run_dir_of()
    config = save_config(cfg, run_dir)
    data = instantiate(cfg.data).load(task)
    estimator = hydra.core.hydra_config.HydraConfig.get().runtime.choices["estimator"]
    seeds = list(range(cfg.seed, cfg.seed + cfg.n_proxy_seeds))
    selection = run_selection(
        data,
        instantiate(cfg.policy),
        instantiate(cfg.estimator),
        estimator,
        selection_cfg,
        seeds,
        run_dir,
        config,
        device=device,
    )
    print(
        f"selected {len(selection.selected)} of {data.prior.n_episodes} prior trajectories with "
        f"{selection.method}; "
        f"wrote {run_dir}/selection.json and report.md"
    )
    print(f"next: python -m datamil.cotrain +task={task} selection={run_dir}/selection.json")


if __name__ == "__main__":
    main()

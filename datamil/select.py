"""`python -m datamil.select +task=metaworld/pick-place-wall`: score the prior, select, write the run.

The proxy seeds can fan out over launcher jobs that share one run directory, then be gathered:

    python -m datamil.select -m +task=... 'seed=range(0,3)' score_only=true run_dir=<shared dir>
    python -m datamil.select +task=... n_proxy_seeds=3 run_dir=<shared dir> gather=true

Each job writes `<run_dir>/scores/seed<N>.npz` and exits; the gather refuses missing or foreign score
files and otherwise writes the selection the single process (`n_proxy_seeds=3`) writes.
"""

from __future__ import annotations

from pathlib import Path

import hydra
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from datamil.cli import CONFIG_DIR, one_line_errors, require_task, require_values, run_dir_of, save_config
from datamil.device import resolve_device
from datamil.errors import DatamilError
from datamil.selection.methods import DATAMODEL_METHODS, RESCORING_METHODS
from datamil.selection.pipeline import check_seed_files, run_selection, score_seeds, score_settings


def check_fan_out(cfg: DictConfig) -> None:
    """Refuse fan-out settings that cannot work, before any work."""
    if not (cfg.score_only or cfg.gather):
        return
    if cfg.score_only and cfg.gather:
        raise DatamilError("score_only=true and gather=true are two steps; run the jobs, then the gather")
    if not cfg.run_dir:
        raise DatamilError("score_only and gather need run_dir=<a directory every job and the gather see>")
    if cfg.selection.method not in DATAMODEL_METHODS - RESCORING_METHODS:
        raise DatamilError(
            f"method {cfg.selection.method} cannot fan out proxy seeds (iterative and refine re-score subsets; "
            "baselines run no proxies); use topk or threshold"
        )


def refuse_estimate(*args, **kwargs):
    raise DatamilError("gather=true trains no proxy, but a score file was not found")


@hydra.main(config_path=CONFIG_DIR, config_name="select", version_base="1.3")
@one_line_errors
def main(cfg: DictConfig) -> None:
    task = require_task(cfg, "python -m datamil.select")
    require_values(cfg)
    check_fan_out(cfg)
    selection_cfg = instantiate(cfg.selection)  # a bad budget or percentile fails here, before any work
    device = resolve_device(cfg.device)  # so does an unknown device, or cuda without one
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    run_dir = Path(cfg.run_dir) if cfg.run_dir else run_dir_of()
    config = save_config(cfg, run_dir_of() if cfg.score_only else run_dir)  # jobs do not race on one file
    data = instantiate(cfg.data).load(task)
    estimator = hydra.core.hydra_config.HydraConfig.get().runtime.choices["estimator"]
    seeds = list(range(cfg.seed, cfg.seed + cfg.n_proxy_seeds))
    if cfg.score_only:
        paths = score_seeds(
            data,
            instantiate(cfg.policy),
            instantiate(cfg.estimator),
            seeds,
            run_dir,
            config,
            device,
            selection_cfg.cross_fit,
        )
        print(f"wrote {', '.join(map(str, paths))}; once every seed is scored, run with gather=true")
        return
    if cfg.gather:
        check_seed_files(run_dir, seeds, score_settings(config, data), selection_cfg.cross_fit)
    selection = run_selection(
        data,
        instantiate(cfg.policy),
        refuse_estimate if cfg.gather else instantiate(cfg.estimator),
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

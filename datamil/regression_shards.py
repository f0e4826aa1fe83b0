"""`python -m datamil.regression_shards`: the regression datamodel, split across Hydra launcher jobs.

    python -m datamil.regression_shards -m +task=metaworld/pick-place-wall 'shard=range(0,4)' n_shards=4 \\
        hydra/launcher=local                                                    # K jobs, one shard each
    python -m datamil.regression_shards +task=metaworld/pick-place-wall n_shards=4 gather=true   # fit + select

Shard k trains its whole vmapped chunks of the M proxies (the same global subsets as `estimator=regression`
in datamil.select) and writes `shard_dir/shard-k-of-K.npz`. The gather checks that all K shards are there
and were made with its settings, fits the datamodel and writes the same run as datamil.select.
"""

from __future__ import annotations

from pathlib import Path

import hydra
import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from datamil.cli import CONFIG_DIR, one_line_errors, require_task, run_dir_of, save_config
from datamil.data.sources import TaskData
from datamil.datamodels.regression import (
    RegressionSpec,
    gather_regression,
    run_regression_shard,
)
from datamil.device import resolve_device
from datamil.errors import DatamilError
from datamil.policies.build import build_policy
from datamil.selection.methods import RESCORING_METHODS
from datamil.selection.pipeline import run_selection

REGRESSION_TARGET = "datamil.datamodels.regression.estimate_regression"
EXAMPLE = "python -m datamil.regression_shards shard=0 n_shards=4"


def regression_spec(cfg: DictConfig) -> RegressionSpec:
    """The RegressionSpec of `estimator=regression` (its Hydra partial's keywords) and `seed`."""
    if cfg.estimator.get("_target_") != REGRESSION_TARGET:
        raise DatamilError("regression_shards scales out the regression datamodel; use estimator=regression")
    return RegressionSpec(rng_seed=int(cfg.seed), **instantiate(cfg.estimator).keywords)


def train_shard(
    cfg: DictConfig, data: TaskData, spec: RegressionSpec, settings: dict, device: torch.device
) -> None:
    policy = build_policy(instantiate(cfg.policy), data.prior).to(device)  # the proxies train where it is
    shard, n_shards = int(cfg.shard), int(cfg.n_shards)
    path = run_regression_shard(
        policy, data.prior, data.target_val, spec, shard, n_shards, cfg.shard_dir, data.target_train, settings
    )
    print(
        f"wrote {path}; once all {n_shards} shards are written, run with the same overrides and gather=true"
    )


def gather(
    cfg: DictConfig, data: TaskData, spec: RegressionSpec, settings: dict, config: dict, device: torch.device
) -> None:
    """Fit on all shards, then select and write the run exactly as `python -m datamil.select` does."""
    selection_cfg, run_dir = instantiate(cfg.selection), run_dir_of()

    def from_shards(policy, prior, target_val, rng_seed, target_train_store) -> np.ndarray:
        args = (spec, int(cfg.n_shards), Path(cfg.shard_dir), target_train_store, settings)
        return gather_regression(policy, prior, target_val, *args).scores

    selection = run_selection(
        data,
        instantiate(cfg.policy),
        from_shards,
        "regression",
        selection_cfg,
        [spec.rng_seed],
        run_dir,
        config,
        device=device,
    )
    print(
        f"gathered {cfg.n_shards} shards from {cfg.shard_dir}; selected {len(selection.selected)} of "
        f"{data.prior.n_episodes} prior trajectories; wrote {run_dir}/selection.json and report.md"
    )
    print(f"next: python -m datamil.cotrain +task={data.task} selection={run_dir}/selection.json")


@hydra.main(config_path=CONFIG_DIR, config_name="regression_shards", version_base="1.3")
@one_line_errors
def main(cfg: DictConfig) -> None:
    task = require_task(cfg, EXAMPLE)
    if cfg.shard is None and not cfg.gather:
        raise DatamilError(f"say which shard to train (shard=<k> n_shards=<K>) or gather=true: `{EXAMPLE}`")
    if cfg.gather and cfg.selection.method in RESCORING_METHODS:
        raise DatamilError(
            f"method={cfg.selection.method} re-estimates on subsets the shards did not train; use topk"
        )
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    device = resolve_device(cfg.device)
    spec = regression_spec(cfg)
    config = save_config(cfg, run_dir_of())
    data = instantiate(cfg.data).load(task)
    settings = {"policy": config["policy"]}  # shards and gather must agree on it (and on data, estimator)
    if cfg.gather:
        gather(cfg, data, spec, settings, config, device)
    else:
        train_shard(cfg, data, spec, settings, device)


if __name__ == "__main__":
    main()

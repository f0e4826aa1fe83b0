"""`python -m datamil.lds_shards`: the truths of an LDS measurement, split across Hydra launcher jobs.

    python -m datamil.lds_shards -m +task=metaworld/pick-place-wall 'shard=range(0,4)' n_shards=4 \\
        hydra/launcher=local                                                    # S jobs, one shard each
    python -m datamil.lds_shards +task=metaworld/pick-place-wall n_shards=4 gather=true   # estimator + LDS

Shard s trains its whole (truth seed, vmapped chunk) units of the proxies on the M held-out subsets (the
subsets of `linear_datamodeling_score`) and writes `shard_dir/shard-s-of-S.npz`. The gather checks that all
S shards are there and were made with its settings, runs the estimator, and writes its LDS against the
(mean) truth: `lds.json` and `truths.npz` in its run directory, the numbers one process computes.
"""

from __future__ import annotations

import json
from dataclasses import asdict

import hydra
import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig

from datamil.cli import CONFIG_DIR, one_line_errors, require_task, run_dir_of, save_config
from datamil.data.sources import TaskData
from datamil.datamodels.lds import LdsRow
from datamil.datamodels.lds_shards import LdsSpec, gather_lds_truths, lds_rows, run_lds_shard
from datamil.device import resolve_device
from datamil.errors import DatamilError
from datamil.io import atomic_write_npz, atomic_write_text
from datamil.policies.build import build_policy

EXAMPLE = "python -m datamil.lds_shards shard=0 n_shards=4"


def lds_spec(cfg: DictConfig) -> LdsSpec:
    """The LdsSpec of `lds` and `seed`: what decides the subsets and the truths' training."""
    lds = cfg.lds
    seeds = None if lds.truth_seeds is None else tuple(int(s) for s in lds.truth_seeds)
    spec = LdsSpec(
        int(cfg.seed), instantiate(lds.proxy), int(lds.n_models), float(lds.alpha), str(lds.mode),
        int(lds.subset_seed), seeds, int(lds.chunk), bool(lds.include_target_train),
    )  # fmt: skip
    spec.seeds  # noqa: B018  (repeated or missing truth seeds fail here, before any work)
    return spec


def row_of(row: LdsRow) -> dict:
    """An LDS row as lds.json records it: name, LDS and its interval (a gather times no estimator)."""
    return {"name": row.name, "lds": row.lds, "low": row.low, "high": row.high}


def gather(cfg: DictConfig, data: TaskData, spec: LdsSpec, settings: dict, device: torch.device) -> None:
    """Gather the truths, score the prior with the estimator, write its LDS as one process would."""
    policy = build_policy(instantiate(cfg.policy), data.prior).to(device)
    args = (spec, int(cfg.n_shards), cfg.shard_dir, data.target_train, settings)
    measured = gather_lds_truths(policy, data.prior, data.target_val, *args)
    name = HydraConfig.get().runtime.choices["estimator"]
    estimate = instantiate(cfg.estimator)
    scores = np.asarray(
        estimate(
            policy, data.prior, data.target_val, rng_seed=spec.seed, target_train_store=data.target_train
        ),
        np.float64,
    )
    rows, ceiling = lds_rows({name: scores}, data.prior, measured, int(cfg.lds.n_boot), spec.seed)
    run_dir = run_dir_of()
    atomic_write_npz(run_dir / "truths.npz", masks=measured.masks, truths=measured.truths, scores=scores)
    result = {
        "task": data.task, "rows": [row_of(r) for r in rows], "truth_seeds": list(measured.seeds),
        "n_models": spec.n_models, "alpha": spec.alpha, "mode": spec.mode, "train_s": measured.train_s,
        "noise_ceiling": asdict(ceiling) if ceiling else None,
    }  # fmt: skip
    atomic_write_text(run_dir / "lds.json", json.dumps(result, indent=2))
    for r in rows:
        print(f"{r.name}: LDS {r.lds:.3f} [{r.low:.2f}, {r.high:.2f}] over {spec.n_models} subsets, "
              f"{len(measured.seeds)} truth seed(s)")  # fmt: skip
    if ceiling:
        print(f"noise ceiling of the {ceiling.k}-seed mean truth: {ceiling.reliability:.3f}")
    print(f"gathered {cfg.n_shards} shards from {cfg.shard_dir}; wrote {run_dir}/lds.json and truths.npz")


@hydra.main(config_path=CONFIG_DIR, config_name="lds_shards", version_base="1.3")
@one_line_errors
def main(cfg: DictConfig) -> None:
    task = require_task(cfg, EXAMPLE)
    if cfg.shard is None and not cfg.gather:
        raise DatamilError(f"say which shard to train (shard=<s> n_shards=<S>) or gather=true: `{EXAMPLE}`")
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    device = resolve_device(cfg.device)
    spec = lds_spec(cfg)
    config = save_config(cfg, run_dir_of())
    data = instantiate(cfg.data).load(task)
    settings = {"policy": config["policy"]}  # shards and gather must agree on it (and on data, lds)
    if cfg.gather:
        gather(cfg, data, spec, settings, device)
        return
    policy = build_policy(instantiate(cfg.policy), data.prior).to(device)  # the proxies train where it is
    args = (spec, int(cfg.shard), int(cfg.n_shards), cfg.shard_dir, data.target_train, settings)
    path = run_lds_shard(policy, data.prior, data.target_val, *args)
    print(
        f"wrote {path}; once all {cfg.n_shards} shards are written, run with the same overrides and gather=true"
    )


if __name__ == "__main__":
    main()

"""Estimator fidelity and cost on one dataset.

    python benchmarks/estimator_fidelity.py                                         # synthetic multi-task data
    python benchmarks/estimator_fidelity.py --task metaworld/pick-place-wall        # embedded default (192 traj.)
    python benchmarks/estimator_fidelity.py --task metaworld/pick-place-wall --data metaworld_full   # 8,250 traj.

Prints (1) P1 cost: exact metagradient wall time ÷ one warm proxy training run, split forward/backward,
over interleaved repeats in one process, for each reverse mode (plain autograd, the default, and
torch.func.vjp); (2) the LDS of every estimator on the same held-out 50% trajectory subsets.
Its LDS is against one training seed; on the full prior, where one seed is mostly batch-order noise, use
benchmarks/fidelity_at_scale.py (a k-seed mean truth and its noise ceiling).
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import replace

import torch

from datamil.data.store import TrajectoryStore
from datamil.datamodels import ProxyConfig, smooth_optim
from datamil.datamodels.base import prepare
from datamil.datamodels.lds import format_table, linear_datamodeling_score, run_estimators
from datamil.datamodels.metagrad import REVERSE_MODES, metagradient
from datamil.datamodels.proxy import train_proxy
from datamil.datamodels.synthetic import synthetic_multitask
from datamil.policies.mlp import MLPPolicy


def task_stores(task: str, data: str) -> tuple[TrajectoryStore, TrajectoryStore]:
    """(prior, target-val) of `task` from datamil/configs/data/<data>.yaml (generated and cached on first use)."""
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from datamil.cli import CONFIG_DIR

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        cfg = compose(config_name=f"data/{data}")
    loaded = instantiate(cfg.data).load(task)
    return loaded.prior, loaded.target_val


def cost_split(policy, prior, target_val, proxy: ProxyConfig, repeats: int, reverse: str) -> dict[str, float]:
    """Median over interleaved warm repeats of (train s, forward s, backward s, ratio)."""
    pool, surrogate = prepare(policy, prior, target_val)
    train_proxy(policy, pool, proxy.with_steps(10), 0)
    metagradient(policy, pool, surrogate, proxy.with_steps(10), 0, reverse=reverse)
    rows = []
    for _ in range(repeats):
        start = time.perf_counter()
        train_proxy(policy, pool, proxy, 0)
        train_s = time.perf_counter() - start
        t = metagradient(policy, pool, surrogate, proxy, 0, reverse=reverse).timings
        rows.append((train_s, t["forward"], t["backward"], (t["forward"] + t["backward"]) / train_s))
    keys = ("train_s", "forward_s", "backward_s", "ratio")
    return {k: statistics.median(r[i] for r in rows) for i, k in enumerate(keys)} | {
        "min_ratio": min(r[3] for r in rows),
        "ratios": [round(r[3], 2) for r in rows],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--task", help="a MetaWorld target: use datamil/configs/data/<--data> (default: synthetic data)"
    )
    parser.add_argument("--data", default="metaworld", help="data config for --task (metaworld_full = 8,250)")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--n-models", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--modes", nargs="+", default=["resample", "reweight"])
    parser.add_argument("--reverse", nargs="+", default=list(REVERSE_MODES), choices=REVERSE_MODES)
    parser.add_argument("--cost-only", action="store_true", help="skip the LDS part")
    parser.add_argument("--regression", action="store_true", help="also run the (slow) regression datamodel")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.task:
        prior, target_val = task_stores(args.task, args.data)
    else:
        prior, _, target_val = synthetic_multitask()
    policy = MLPPolicy(
        prior.arrays["obs/state"].shape[1], prior.action_dim, state_stats=prior.pooled_stats("obs/state")
    )
    proxy = ProxyConfig(replace(smooth_optim(), total_steps=args.steps), batch_size=args.batch_size)
    print(
        f"data: {f'{args.data} / {args.task}' if args.task else 'synthetic'}, {prior.n_episodes} prior episodes, "
        f"{prior.n_steps} steps; proxy: GELU 256x256, {args.steps} steps, batch {args.batch_size}, Adam eps 1e-2"
    )
    print(f"P1 cost, median of {args.repeats} interleaved warm repeats, in units of one warm training run")
    for reverse in args.reverse:
        c = cost_split(policy, prior, target_val, proxy, args.repeats, reverse)
        print(
            f"  reverse={reverse:<8} train {c['train_s']:.2f} s, metagrad forward {c['forward_s']:.2f} s + "
            f"backward {c['backward_s']:.2f} s = {c['ratio']:.2f}x (min {c['min_ratio']:.2f}x; each {c['ratios']})"
        )
    if args.cost_only:
        return
    estimators = {"metagrad": {}, "truncated": {"window": 50}, "influence": {}}
    if args.regression:
        estimators["regression"] = {"n_models": 64}
    scores, walls = run_estimators(policy, prior, target_val, estimators, proxy, 0)
    for mode in args.modes:
        rows, _, _ = linear_datamodeling_score(
            policy, prior, target_val, scores, proxy, 0, args.n_models, mode=mode
        )
        for row in rows:
            row.wall_s, row.cost_ratio = walls[row.name], walls[row.name] / c["train_s"]
        print(f"\nLDS, {args.n_models} held-out 50% trajectory subsets, mode={mode}")
        print(format_table(rows))


if __name__ == "__main__":
    main()

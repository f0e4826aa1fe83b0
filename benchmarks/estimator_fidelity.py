"""Estimator fidelity and cost on one small dataset.

    python benchmarks/estimator_fidelity.py                       # synthetic multi-task data
    python benchmarks/estimator_fidelity.py --metaworld           # 11 MetaWorld tasks x 10 scripted episodes

Prints (1) P1 cost: exact metagradient wall time ÷ one warm proxy training run, split forward/backward,
over interleaved repeats in one process; (2) the LDS of every estimator on the same held-out 50%
trajectory subsets. Bars: metagrad LDS >= 0.9 and >= truncated + 0.2; cost <= 3x.
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import replace
from pathlib import Path

import torch

from datamil.data.store import TrajectoryStore
from datamil.datamodels import ProxyConfig, smooth_optim
from datamil.datamodels.base import prepare
from datamil.datamodels.lds import format_table, linear_datamodeling_score, run_estimators
from datamil.datamodels.metagrad import metagradient
from datamil.datamodels.proxy import train_proxy
from datamil.datamodels.synthetic import synthetic_multitask
from datamil.policies.mlp import MLPPolicy

METAWORLD_TASKS = [
    "pick-place-wall",
    "pick-place",
    "push",
    "push-wall",
    "reach",
    "sweep",
    "door-open",
    "drawer-close",
    "button-press",
    "window-open",
    "basketball",
]


def metaworld_stores(cache: Path, seed: int) -> tuple[TrajectoryStore, TrajectoryStore]:
    """(prior, target-val): 11 tasks x 10 noisy scripted episodes; target = pick-place-wall, 5 clean demos."""
    from sim_tasks.generate import generate_episodes, generate_target_demos  # heavy: only when asked

    if not (cache / "prior").exists():
        tasks = [f"metaworld/{t}" for t in METAWORLD_TASKS]
        TrajectoryStore.from_episodes(generate_episodes(tasks, 10, seed)).save(cache / "prior")
        TrajectoryStore.from_episodes(generate_target_demos(tasks[0], 5, seed)).save(cache / "target_val")
    return TrajectoryStore.load(cache / "prior", mmap=False), TrajectoryStore.load(
        cache / "target_val", mmap=False
    )


def cost_split(policy, prior, target_val, proxy: ProxyConfig, repeats: int) -> dict[str, float]:
    """Median over interleaved warm repeats of (train s, forward s, backward s, ratio)."""
    pool, surrogate = prepare(policy, prior, target_val)
    train_proxy(policy, pool, proxy.with_steps(10), 0)
    metagradient(policy, pool, surrogate, proxy.with_steps(10), 0)
    rows = []
    for _ in range(repeats):
        start = time.perf_counter()
        train_proxy(policy, pool, proxy, 0)
        train_s = time.perf_counter() - start
        t = metagradient(policy, pool, surrogate, proxy, 0).timings
        rows.append((train_s, t["forward"], t["backward"], (t["forward"] + t["backward"]) / train_s))
    keys = ("train_s", "forward_s", "backward_s", "ratio")
    return {k: statistics.median(r[i] for r in rows) for i, k in enumerate(keys)} | {
        "min_ratio": min(r[3] for r in rows)
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--metaworld", action="store_true", help="use generated MetaWorld data (cached)")
    parser.add_argument("--cache", default="/tmp/datamil_fidelity_metaworld")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--n-models", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--modes", nargs="+", default=["resample", "reweight"])
    parser.add_argument("--regression", action="store_true", help="also run the (slow) regression datamodel")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.metaworld:
        prior, target_val = metaworld_stores(Path(args.cache), 0)
    else:
        prior, _, target_val = synthetic_multitask()
    policy = MLPPolicy(
        prior.arrays["obs/state"].shape[1], prior.action_dim, state_stats=prior.pooled_stats("obs/state")
    )
    proxy = ProxyConfig(replace(smooth_optim(), total_steps=args.steps), batch_size=args.batch_size)
    print(
        f"data: {'metaworld' if args.metaworld else 'synthetic'}, {prior.n_episodes} prior episodes, "
        f"{prior.n_steps} steps; proxy: GELU 256x256, {args.steps} steps, batch {args.batch_size}, Adam eps 1e-2"
    )
    c = cost_split(policy, prior, target_val, proxy, args.repeats)
    print(
        f"P1 cost (median of {args.repeats} interleaved warm repeats): train {c['train_s']:.2f} s, metagrad "
        f"forward {c['forward_s']:.2f} s + backward {c['backward_s']:.2f} s = {c['ratio']:.2f}x "
        f"(min {c['min_ratio']:.2f}x; bar <= 3x)"
    )
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

"""`python -m datamil.lds`: the linear datamodeling score of each estimator on one dataset.

    python -m datamil.lds                                   # embedded synthetic multi-task data
    python -m datamil.lds --task metaworld/pick-place-wall  # the embedded MetaWorld default (data=metaworld)
    python -m datamil.lds --prior STORE --target-train STORE --target-val STORE  # saved trajectory stores

Prints one table: estimator, LDS [95% bootstrap interval], wall time, wall time ÷ one proxy training run.
Proxies train on prior + target-train, as `select` does by default (--no-include-target-train: the prior
only). Costs are warm: every estimator is warmed up on a short run, then --repeats rounds each time one
proxy training run and every estimator, and the table gives medians. The library functions are
`datamil.datamodels.lds.linear_datamodeling_score` and `estimator_costs`.
"""

from __future__ import annotations

import argparse
from dataclasses import replace

import torch

from datamil.data.store import TrajectoryStore
from datamil.datamodels import ESTIMATORS, ProxyConfig, smooth_optim
from datamil.datamodels.lds import compare_estimators, format_table
from datamil.datamodels.synthetic import synthetic_multitask
from datamil.errors import DatamilError
from datamil.policies.mlp import MLPPolicy


def estimator_kwargs(args: argparse.Namespace) -> dict[str, dict]:
    """Keyword arguments of each requested estimator."""
    defaults = {"regression": {"n_models": 64}, "truncated": {"window": args.window}}
    return {name: defaults.get(name, {}) for name in args.estimators}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m datamil.lds", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--task",
        help="a MetaWorld target: use the embedded default data (datamil/configs/data/metaworld.yaml)",
    )
    parser.add_argument("--prior", help="prior trajectory store directory (default: synthetic data)")
    parser.add_argument("--target-train", help="target-train store directory (for --include-target-train)")
    parser.add_argument("--target-val", help="target-validation store directory")
    parser.add_argument(
        "--include-target-train",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="train every proxy on prior + target-train, as `select` does by default (only prior is scored)",
    )
    parser.add_argument("--estimators", nargs="+", default=["metagrad", "truncated", "influence"])
    parser.add_argument("--steps", type=int, default=400, help="proxy training steps")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--window", type=int, default=50, help="truncated estimator's reverse window W")
    parser.add_argument("--n-models", type=int, default=50, help="held-out subsets (proxies) for the LDS")
    parser.add_argument("--mode", choices=["resample", "reweight"], default="resample")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved warm rounds timing the costs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    return parser.parse_args(argv)


def load_data(args: argparse.Namespace) -> tuple[TrajectoryStore, TrajectoryStore | None, TrajectoryStore]:
    """(prior, target-train or None, target-val)."""
    if args.task is not None:
        from hydra.utils import instantiate
        from omegaconf import OmegaConf

        from datamil.cli import CONFIG_DIR

        data = instantiate(OmegaConf.load(f"{CONFIG_DIR}/data/metaworld.yaml")).load(args.task)
        return data.prior, data.target_train, data.target_val
    if args.prior is None:
        return synthetic_multitask(seed=args.seed)
    if args.target_val is None:
        raise DatamilError("--prior needs --target-val (held-out target demos for the surrogate)")
    if args.include_target_train and args.target_train is None:
        raise DatamilError(
            "--prior needs --target-train, or --no-include-target-train to train on the prior only"
        )
    target_train = TrajectoryStore.load(args.target_train) if args.target_train else None
    return TrajectoryStore.load(args.prior), target_train, TrajectoryStore.load(args.target_val)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    prior, target_train, target_val = load_data(args)
    for name in args.estimators:
        ESTIMATORS.get(name)  # unknown names fail before any training
    policy = MLPPolicy(
        prior.arrays["obs/state"].shape[1], prior.action_dim, state_stats=prior.pooled_stats("obs/state")
    )
    proxy = ProxyConfig(replace(smooth_optim(), total_steps=args.steps), batch_size=args.batch_size)
    estimators = estimator_kwargs(args)
    rows, base = compare_estimators(
        policy, prior, target_val, estimators, proxy, args.seed, args.n_models, mode=args.mode,
        repeats=args.repeats, target_train_store=target_train, include_target_train=args.include_target_train,
    )  # fmt: skip
    pool = "prior + target-train" if args.include_target_train else "prior only"
    print(
        f"{prior.n_episodes} prior episodes, {prior.n_steps} steps; proxy {args.steps} steps x {args.batch_size} "
        f"on {pool}; one proxy training run = {base:.2f} s (warm median of {args.repeats}); "
        f"LDS over {args.n_models} {args.mode} 50% subsets"
    )
    print(format_table(rows))


if __name__ == "__main__":
    try:
        main()
    except DatamilError as err:
        raise SystemExit(f"error: {err}") from None

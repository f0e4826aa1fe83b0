"""Estimator fidelity where selection matters: the full 8,250-trajectory MetaWorld prior.

At full size the true surrogate of one proxy run is half batch-order noise, so every estimator is scored
against a truth averaged over k training seeds, next to that truth's own noise ceiling:

    python benchmarks/fidelity_at_scale.py ceiling               # one-seed agreement and k for reliability >= 0.85
    python benchmarks/fidelity_at_scale.py lds                   # every estimator vs the k-seed mean truth
    python benchmarks/fidelity_at_scale.py cost                  # each estimator ÷ one proxy run, same process
    python benchmarks/fidelity_at_scale.py memory                # peak memory of one metagradient
    python benchmarks/fidelity_at_scale.py margin                # from lds.csv: the default against the best other
    python benchmarks/tables.py                                  # the tables, from the committed CSVs only

`--pool action_similarity:0.2` measures around a retrieval pool instead (what `method=refine` scores): the
prior becomes the 20% of it that action_similarity ranks closest to the target, and alpha is a share of
that pool (alpha 0.5 of a 20% pool = 10% of the prior, the selection's size). Pass its own --out.

Defaults: target metaworld/pick-place-wall (a development task), the shipped proxy (400 x 256, prior +
target-train), subsets of alpha = 0.5 and 0.1 of the prior trajectories. The truth trains the way
co-training draws its batches (uniform over steps); the estimators may train their proxy differently
(`--variants`), which is what is being compared. Truths and scores are cached in --work (resumable after
a kill); finished rows go to CSVs in --out (benchmarks/results/fidelity_at_scale/), which tables.py reads.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from scipy import stats
from tqdm.auto import tqdm

from datamil.datamodels import ESTIMATORS, ProxyConfig, smooth_optim
from datamil.datamodels.base import prepare_proxy
from datamil.datamodels.lds import (
    attainable_lds,
    noise_ceiling,
    predicted_surrogates,
    proxy_training_seconds,
    seeds_for_reliability,
    spearman_interval,
    true_surrogates,
    truth_seeds,
)
from datamil.datamodels.proxy import random_masks
from datamil.errors import DatamilError
from datamil.io import atomic_write_npz, atomic_write_text
from datamil.policies.mlp import MLPPolicy

RESULTS = Path(__file__).parent / "results" / "fidelity_at_scale"
SUBSET_SEED = 10_001


def load_task(task: str, data: str):
    """TaskData of `task` from datamil/configs/data/<data>.yaml (generated and cached on first use)."""
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from datamil.cli import CONFIG_DIR

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        cfg = compose(config_name=f"data/{data}")
    return instantiate(cfg.data).load(task)


def task_data(args: argparse.Namespace):
    """The task's data, its prior cut to `--pool` (METHOD:SHARE) when given: the SHARE of the prior trajectories
    that the retrieval METHOD ranks closest to the target, as `method=refine` builds its pool."""
    if not args.pool:
        return load_task(args.task, args.data)
    from datamil.data.sources import TaskData
    from datamil.selection.methods import retrieval_pool

    method, _, share = args.pool.partition(":")
    try:
        share = float(share)
    except ValueError:
        raise DatamilError(
            f"--pool {args.pool!r}: give METHOD:SHARE, e.g. --pool action_similarity:0.2"
        ) from None
    data = load_task(args.task, args.data)
    pool = retrieval_pool(data, method, share, args.seed)
    return TaskData(data.task, data.prior.subset(pool), data.target_train, data.target_val)


def work_dir(args: argparse.Namespace) -> Path:
    """Cache of truths and scores of this task (and pool): a pool never reads the whole prior's cache."""
    pool = f"__pool-{args.pool.replace(':', '-')}" if args.pool else ""
    return Path(args.work) / f"{args.task.replace('/', '__')}{pool}"


def proxy_policy(prior) -> MLPPolicy:
    """The shipped proxy policy (datamil/configs/policy/bc_mlp.yaml defaults: GELU 256 x 256)."""
    return MLPPolicy(
        prior.arrays["obs/state"].shape[1], prior.action_dim, state_stats=prior.pooled_stats("obs/state")
    )


def truth_config(args: argparse.Namespace) -> ProxyConfig:
    """The counterfactual training the truth measures: co-training's uniform draws, the shipped optimizer."""
    return ProxyConfig(replace(smooth_optim(), total_steps=args.steps), args.batch_size, sampling="uniform")


def cached_truths(args, data, policy, masks: np.ndarray, alpha: float, seeds: list[int]) -> np.ndarray:
    """(k, M) truths, one cached file per (alpha, seed): a killed run resumes at the next seed."""
    work = work_dir(args) / f"truth-{args.steps}x{args.batch_size}"
    out = []
    for seed in tqdm(seeds, desc=f"truth seeds, alpha={alpha}"):
        path = work / f"alpha{alpha}-m{len(masks)}-seed{seed}.npz"
        if path.is_file() and np.array_equal(np.load(path)["masks"], masks):
            out.append(np.load(path)["truth"])
            continue
        truth = true_surrogates(
            policy, data.prior, data.target_val, masks, truth_config(args), seed,
            target_train_store=data.target_train, include_target_train=True,
        )  # fmt: skip
        atomic_write_npz(path, truth=truth, masks=masks)
        out.append(truth)
    return np.stack(out)


def subsets(args, data, alpha: float) -> np.ndarray:
    return random_masks(data.prior.n_episodes, args.n_models, alpha, np.random.default_rng([SUBSET_SEED, 0]))


def write_rows(path: Path, rows: list[dict]) -> Path:
    """Merge `rows` into the CSV at `path`, keyed by every column but the measured ones."""
    old = list(csv.DictReader(path.open(newline=""))) if path.is_file() else []
    key = lambda r: tuple(str(r[k]) for k in r if k in ("alpha", "estimator", "proxy_seeds", "k", "task"))  # noqa: E731
    merged = {key(r): r for r in old} | {key(r): {k: str(v) for k, v in r.items()} for r in rows}
    fields = list(dict.fromkeys(k for r in merged.values() for k in r))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, restval="", lineterminator="\n")
    writer.writeheader()
    writer.writerows(merged.values())
    return atomic_write_text(path, buffer.getvalue())


def run_ceiling(args: argparse.Namespace) -> None:
    """One-seed agreement of the truth, and its k-seed reliability, at each alpha."""
    data = task_data(args)
    policy = proxy_policy(data.prior)
    rows = []
    for alpha in args.alphas:
        truths = cached_truths(
            args, data, policy, subsets(args, data, alpha), alpha, truth_seeds(args.seed, args.k)
        )
        c = noise_ceiling(truths)
        spread = float(truths.mean(0).std())
        rows.append(
            {"task": args.task, "alpha": alpha, "k": c.k, "n_models": args.n_models, "single_seed": round(c.single_seed, 3),
             "half": round(c.half, 3), "reliability": round(c.reliability, 3),
             "k_for_0.85": seeds_for_reliability(c.single_seed), "seed_std": round(float(truths.std(0, ddof=1).mean()), 5),
             "subset_std": round(spread, 5)}
        )  # fmt: skip
        print(rows[-1])
    write_rows(Path(args.out) / "ceiling.csv", rows)


VARIANTS = {  # how an estimator's own proxy run draws its batches (the truth always draws uniformly)
    "uniform": {"sampling": "uniform"},
    "epoch": {"sampling": "epoch"},
    "trajectory": {"sampling": "trajectory"},
    "cover": {"sampling": "cover"},  # epoch permutations, the batch raised to cover the pool ("auto" here)
}


def estimator_calls(args: argparse.Namespace) -> dict[str, tuple[str, dict, dict]]:
    """label -> (registered estimator, keyword arguments, proxy overrides), at about equal compute."""
    calls = {}
    for variant in args.variants:
        calls[f"metagrad/{variant}"] = ("metagrad", {"include_target_train": True}, VARIANTS[variant])
        for batch in args.estimator_batch_sizes:  # a larger proxy batch: less batch-order noise, more compute
            calls[f"metagrad/{variant}-b{batch}"] = (
                "metagrad",
                {"include_target_train": True},
                VARIANTS[variant] | {"batch_size": batch},
            )
        for k in args.expectation_points:  # the expectation over batch orders, K injection points
            kwargs = {
                "include_target_train": True,
                "expectation_points": k,
                "steps_per_trajectory": args.expectation_steps,
            }
            calls[f"metagrad-expected-K{k}x{args.expectation_steps}/{variant}"] = (
                "metagrad",
                kwargs,
                VARIANTS[variant],
            )
    extra = {  # settings that keep each at about the compute of one metagradient
        "truncated": {"window": 50},
        "regression": {"n_models": args.regression_models},
        "trak": {"proj_dim": 256, "steps_per_trajectory": args.trak_steps},
    }
    for name in args.others:
        kwargs = {"include_target_train": True} | extra.get(name, {})
        calls[f"{name}/{args.others_variant}"] = (name, kwargs, VARIANTS[args.others_variant])
    return calls


def cached_scores(
    args, data, policy, label: str, call: tuple[str, dict, dict], seed: int
) -> tuple[np.ndarray, float]:
    """(scores, wall s) of one estimator call, cached per (label, seed)."""
    name, kwargs, overrides = call
    path = (
        work_dir(args)
        / "scores"
        / f"{label.replace('/', '__')}-{args.steps}x{args.batch_size}-seed{seed}.npz"
    )
    if path.is_file():
        saved = np.load(path)
        return saved["scores"], float(saved["wall_s"])
    proxy = replace(truth_config(args), **overrides)
    start = time.perf_counter()
    result = ESTIMATORS.get(name)(
        policy, data.prior, data.target_val, seed, proxy=proxy, target_train_store=data.target_train, **kwargs
    )
    wall = time.perf_counter() - start
    atomic_write_npz(path, scores=result.scores, wall_s=np.array(wall))
    return result.scores, wall


def run_lds(args: argparse.Namespace) -> None:
    """Every estimator's LDS against the k-seed mean truth at each alpha, with cost ÷ one proxy run."""
    data = task_data(args)
    policy = proxy_policy(data.prior)
    calls = estimator_calls(args)
    scores, walls = {}, {}
    for label, call in tqdm(calls.items(), desc="estimators"):
        runs = [
            cached_scores(args, data, policy, label, call, args.seed + 100 * j)
            for j in range(args.proxy_seeds)
        ]
        scores[label] = np.mean([s for s, _ in runs], axis=0)
        walls[label] = sum(w for _, w in runs)
    rows = []
    for alpha in args.alphas:
        masks = subsets(args, data, alpha)
        truths = cached_truths(args, data, policy, masks, alpha, truth_seeds(args.seed, args.k))
        c = noise_ceiling(truths)
        for label, s in scores.items():
            predicted = predicted_surrogates(s, data.prior, masks)
            rho, low, high = spearman_interval(predicted, truths.mean(0))
            one = float(stats.spearmanr(predicted, truths[0]).statistic)  # against a single seed's truth
            rows.append(
                {"task": args.task, "alpha": alpha, "estimator": label, "proxy_seeds": args.proxy_seeds,
                 "k": c.k, "lds_mean_truth": round(rho, 3), "low": round(low, 3), "high": round(high, 3),
                 "lds_one_seed_truth": round(one, 3), "reliability": round(c.reliability, 3),
                 "ratio_to_ceiling": round(rho / c.reliability, 3), "zero_scores": round(float(np.mean(s == 0)), 3),
                 "wall_s": round(walls[label], 1)}
            )  # fmt: skip
            print(rows[-1])
    write_rows(Path(args.out) / "lds.csv", rows)


DEFAULT_ESTIMATOR = "metagrad/cover"  # what `sampling: auto` runs at full size
MARGIN = 0.1  # §1 of the bar: the default >= every other estimator + 0.1


def run_margin(args: argparse.Namespace) -> None:
    """From lds.csv alone (no training): at each (alpha, k), the default estimator against the best other
    estimator family, both also divided by the attainable LDS (lds.attainable_lds), and what the margin
    asks of the default as a share of what any estimator can attain."""
    path = Path(args.out) / "lds.csv"
    if not path.is_file():
        raise DatamilError(f"{path} does not exist; run `fidelity_at_scale.py lds` first")
    rows = [r for r in csv.DictReader(path.open(newline="")) if r["proxy_seeds"] == "1"]
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["task"], r["alpha"], r["k"]), []).append(r)
    out = []
    for (task, alpha, k), group in groups.items():
        default = [r for r in group if r["estimator"] == DEFAULT_ESTIMATOR]
        others = [r for r in group if not r["estimator"].startswith("metagrad/")]
        if not default or not others:
            continue
        best = max(others, key=lambda r: float(r["lds_mean_truth"]))
        lds, other = float(default[0]["lds_mean_truth"]), float(best["lds_mean_truth"])
        top = attainable_lds(float(default[0]["reliability"]))
        out.append(
            {"task": task, "alpha": alpha, "k": k, "reliability": default[0]["reliability"], "attainable": round(top, 3),
             "default": DEFAULT_ESTIMATOR, "default_lds": lds, "best_other": best["estimator"], "best_other_lds": other,
             "margin": round(lds - other, 3), "needed_lds": round(other + MARGIN, 3),
             "needed_share_of_attainable": round((other + MARGIN) / top, 3),
             "default_vs_signal": round(lds / top, 3), "best_other_vs_signal": round(other / top, 3)}
        )  # fmt: skip
        print(out[-1])
    if not out:
        raise DatamilError(f"{path} has no ({DEFAULT_ESTIMATOR}, other estimator) pair at one alpha and k")
    write_rows(Path(args.out) / "margin.csv", out)


def run_cost(args: argparse.Namespace) -> None:
    """Each estimator's wall time over one proxy training run timed right before it, in one process, after
    a short warm-up of both: ratios that hold on a busy machine, unlike walls from different runs."""
    data = task_data(args)
    policy = proxy_policy(data.prior)
    shipped = proxy_training_seconds(
        policy, data.prior, data.target_val, truth_config(args), args.seed, repeats=1
    )
    rows = []
    for label, (name, kwargs, overrides) in estimator_calls(args).items():
        proxy = replace(truth_config(args), **overrides)  # as the estimator gets it: it fits it to the pool
        *_, fitted = prepare_proxy(  # the run it differentiates, which `base` times
            policy, data.prior, data.target_val, data.target_train, kwargs["include_target_train"], proxy
        )
        estimator = ESTIMATORS.get(name)

        def run(p: ProxyConfig, estimator=estimator, kwargs=kwargs) -> None:
            estimator(
                policy,
                data.prior,
                data.target_val,
                args.seed,
                proxy=p,
                target_train_store=data.target_train,
                **kwargs,
            )

        run(fitted.with_steps(5))  # warm-up at the fitted batch (5 steps of "auto" would fit a huge one)
        base = proxy_training_seconds(policy, data.prior, data.target_val, fitted, args.seed, repeats=1)
        start = time.perf_counter()
        run(proxy)
        wall = time.perf_counter() - start
        rows.append({"task": args.task, "estimator": label, "k": "", "alpha": "", "proxy_batch": fitted.batch_size,
                     "proxy_run_s": round(base, 2), "wall_s": round(wall, 1), "cost_x_proxy": round(wall / base, 2),
                     "cost_x_shipped_proxy": round(wall / shipped, 2)})  # fmt: skip
        print(rows[-1])
        write_rows(Path(args.out) / "cost.csv", rows[-1:])  # row by row: a long estimator may be cut off


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_memory(args: argparse.Namespace) -> None:
    """Peak memory of one metagradient on the full prior, whole-run recording vs segment checkpoints. Each
    setting runs in a fresh process, so its peak is its own; the loaded data alone is measured first."""
    import subprocess
    import sys

    if args.checkpoint_every is not None:  # the child: load, build the pool, score, report
        data = task_data(args)
        policy = proxy_policy(data.prior)
        proxy = replace(truth_config(args), sampling=args.proxy_sampling)
        loaded = peak_rss_mib()
        start = time.perf_counter()
        info = {}
        if args.checkpoint_every > 0:
            info = ESTIMATORS.get("metagrad")(
                policy, data.prior, data.target_val, args.seed, proxy=proxy, checkpoint_every=args.checkpoint_every,
                include_target_train=True, target_train_store=data.target_train,
            ).info  # fmt: skip
        what = "data loaded (no estimator)"
        if info:  # the batch and segments the run used: "auto" may raise the one and shorten the other
            what = f"metagrad/{args.proxy_sampling} (batch {info['batch_size']}, {info['sampling']}, segments of {info['checkpoint_every']} steps)"
        print(json.dumps({"estimator": what, "loaded_mib": round(loaded), "peak_mib": round(peak_rss_mib()),
                          "wall_s": round(time.perf_counter() - start, 1)}))  # fmt: skip
        return
    rows = []
    for every in [0, *args.segments]:
        out = subprocess.run(
            [sys.executable, __file__, "memory", "--checkpoint-every", str(every), "--task", args.task, "--data", args.data,
             "--steps", str(args.steps), "--batch-size", str(args.batch_size), "--proxy-sampling", args.proxy_sampling],
            check=True, capture_output=True, text=True,
        ).stdout.strip().splitlines()[-1]  # fmt: skip
        rows.append({"task": args.task, "steps": args.steps, "k": "", "alpha": ""} | json.loads(out))
        print(rows[-1])
    write_rows(Path(args.out) / "memory.csv", rows)


STAGES = {
    "ceiling": run_ceiling,
    "lds": run_lds,
    "cost": run_cost,
    "memory": run_memory,
    "margin": run_margin,
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("stage", choices=list(STAGES))
    parser.add_argument("--task", default="metaworld/pick-place-wall")
    parser.add_argument("--data", default="metaworld_full")
    parser.add_argument(
        "--pool", default=None, help="METHOD:SHARE, e.g. action_similarity:0.2: measure in that pool"
    )
    parser.add_argument("--steps", type=int, default=400, help="proxy (and truth) training steps")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--n-models", type=int, default=40, help="held-out subsets per alpha")
    parser.add_argument("--alphas", type=float, nargs="+", default=[0.5, 0.1])
    parser.add_argument("--k", type=int, default=6, help="truth training seeds (even: split in halves)")
    parser.add_argument("--seed", type=int, default=0, help="the estimators' proxy seed")
    parser.add_argument(
        "--proxy-seeds", type=int, default=1, help="average estimator scores over this many seeds"
    )
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument(
        "--estimator-batch-sizes", type=int, nargs="*", default=[],
        help="also score metagrad with its proxy at these batch sizes (the truth keeps --batch-size)",
    )  # fmt: skip
    parser.add_argument("--others", nargs="*", default=["truncated", "influence", "regression", "trak"])
    parser.add_argument("--others-variant", default="uniform", choices=list(VARIANTS))
    parser.add_argument("--regression-models", type=int, default=4, help="regression proxies (equal compute)")
    parser.add_argument(
        "--expectation-points", type=int, nargs="*", default=[], help="metagrad expectation: K values"
    )
    parser.add_argument(
        "--expectation-steps", type=int, default=8, help="metagrad expectation: steps per trajectory"
    )
    parser.add_argument("--trak-steps", type=int, default=8, help="TRAK: featurized steps per trajectory")
    parser.add_argument("--work", default="outputs/fidelity_at_scale", help="cache of truths and scores")
    parser.add_argument("--out", default=str(RESULTS), help="where the CSVs and tables go")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--segments", type=int, nargs="+", default=[500, 100], help="memory: checkpoint_every values"
    )
    parser.add_argument(
        "--proxy-sampling", default="auto", choices=["auto", *VARIANTS], help="memory: the proxy's sampling"
    )
    parser.add_argument("--checkpoint-every", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    STAGES[args.stage](args)
    atomic_write_text(Path(args.work) / "last_args.json", json.dumps(vars(args), default=str))


if __name__ == "__main__":
    from datamil.cli import one_line_errors

    one_line_errors(main)(None)

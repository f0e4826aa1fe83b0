"""Linear datamodeling score (LDS; Park et al. 2023): does an estimator's additive prediction rank the
true surrogate of proxies trained on held-out random subsets?

    LDS = Spearman_m( sum_{i in subset_m} scores[i],  S(theta*(subset_m)) ),   m = 1..M           (lds)

Subsets are fresh random alpha-fractions of the prior TRAJECTORIES (never those any estimator was fit on);
the M proxies train together as vmapped ensembles with the estimators' seed. Two counterfactuals:
mode="resample" trains each proxy on its subset's pool (what co-training on a selection does);
mode="reweight" keeps the scored run's batches and zeroes the weights of dropped samples (what the
metagradient is literally a derivative of). A percentile bootstrap over the M subsets gives an interval.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from scipy.stats import bootstrap, spearmanr

from datamil.data.store import TrajectoryStore
from datamil.datamodels.base import ESTIMATORS, prepare
from datamil.datamodels.proxy import (
    ProxyConfig,
    ensemble_surrogates_on_subsets,
    random_masks,
    subset_rows,
    train_proxy,
)
from datamil.errors import DatamilError
from datamil.policies.base import Policy


@dataclass
class LdsRow:
    """One estimator's LDS with its bootstrap interval and cost (wall s, and ÷ one proxy training run)."""

    name: str
    lds: float
    low: float
    high: float
    wall_s: float = float("nan")
    cost_ratio: float = float("nan")


def predicted_surrogates(scores: np.ndarray, store: TrajectoryStore, masks: np.ndarray) -> np.ndarray:
    """(M,) sum of the per-step scores of each mask's episodes (up to the constant of eq. lds)."""
    per_episode = np.bincount(store.episode_of_step, weights=scores, minlength=store.n_episodes)
    return masks.astype(np.float64) @ per_episode


def spearman_interval(
    pred: np.ndarray, true: np.ndarray, n_boot: int = 1000, seed: int = 0, level: float = 0.95
) -> tuple[float, float, float]:
    """(rho, low, high): Spearman correlation and its percentile bootstrap interval over the pairs.

    scipy.stats.bootstrap draws the paired resamples; the percentiles are taken over the finite ones,
    because a resample can be constant (its Spearman is NaN), where scipy's own interval would be NaN."""
    rho = float(spearmanr(pred, true).statistic)
    with warnings.catch_warnings():  # constant resamples warn; they are skipped below
        warnings.simplefilter("ignore")
        boots = bootstrap(
            (pred, true),
            lambda x, y: spearmanr(x, y).statistic,
            paired=True,
            vectorized=False,
            n_resamples=n_boot,
            confidence_level=level,
            method="percentile",
            random_state=np.random.default_rng(seed),
        ).bootstrap_distribution
    low, high = np.nanquantile(boots, [(1 - level) / 2, (1 + level) / 2])
    return rho, float(low), float(high)


def true_surrogates(
    policy: Policy,
    train_store: TrajectoryStore,
    target_val_store: TrajectoryStore,
    masks: np.ndarray,
    proxy: ProxyConfig,
    seed: int,
    mode: str = "resample",
    chunk: int = 25,
    target_train_store: TrajectoryStore | None = None,
    include_target_train: bool = False,
) -> np.ndarray:
    """(M,) surrogate of a proxy trained on each mask's prior episodes (+ target-train when included)."""
    pool, surrogate = prepare(policy, train_store, target_val_store, target_train_store, include_target_train)
    if mode == "resample":
        rows = subset_rows(pool, train_store.n_episodes, masks)
        return ensemble_surrogates_on_subsets(policy, pool, surrogate, rows, proxy, seed, chunk)
    if mode == "reweight":
        keep = np.ones((len(masks), pool.size), np.float64)
        keep[:, : pool.n_scored] = masks[:, train_store.episode_of_step]
        rows = [np.arange(pool.size)] * len(masks)
        return ensemble_surrogates_on_subsets(
            policy, pool, surrogate, rows, proxy, seed, chunk, torch.from_numpy(keep)
        )
    raise DatamilError(f"unknown LDS mode {mode!r}; use 'resample' or 'reweight'")


@dataclass
class NoiseCeiling:
    """How much of a truth is signal: Spearman agreement between training seeds on the same subsets.

    single_seed: mean Spearman between the truths of two seeds (the ceiling of a one-seed LDS);
    half: Spearman between the mean truths of two disjoint halves of the k seeds;
    reliability: the Spearman-Brown step-up 2 half / (1 + half), the ceiling of the k-seed mean truth.
    """

    k: int
    single_seed: float
    half: float
    reliability: float


def noise_ceiling(truths: np.ndarray) -> NoiseCeiling:
    """The ceiling of (k, M) truths (k >= 2 seeds of the same M subsets); see `NoiseCeiling`."""
    k = len(truths)
    if k < 2:
        raise DatamilError(f"a noise ceiling needs at least 2 truth seeds, got {k}")
    pairs = [spearmanr(truths[a], truths[b]).statistic for a in range(k) for b in range(a + 1, k)]
    half = float(spearmanr(truths[: k // 2].mean(0), truths[k // 2 :].mean(0)).statistic)
    return NoiseCeiling(k, float(np.mean(pairs)), half, 2 * half / (1 + half))


def seeds_for_reliability(single_seed: float, reliability: float = 0.85) -> int:
    """Seeds k whose mean truth reaches `reliability` by Spearman-Brown, from one-seed agreement r:
    k r / (1 + (k - 1) r) >= reliability  <=>  k >= reliability (1 - r) / (r (1 - reliability))."""
    r = max(float(single_seed), 1e-3)
    return max(2, int(np.ceil(reliability * (1 - r) / (r * (1 - reliability)) - 1e-9)))


def attainable_lds(reliability: float) -> float:
    """The LDS a noiseless estimator (the expected truth itself) would score against a truth of this
    reliability: sqrt(reliability).

    Why: with truth = signal + seed noise independent of the estimator, an estimator's correlation with the
    truth is its correlation with the signal times corr(signal, truth) = sqrt(reliability) (the attenuation
    of classical test theory; for Spearman an approximation). So the reliability itself is not the highest
    LDS there is (an estimator may exceed it), and LDS / sqrt(reliability) estimates agreement with the
    signal: how far an estimator is from perfect, and how much room a margin over another one has. A
    reliability <= 0 (two seeds agree no better than chance) leaves nothing to attain: 0."""
    return float(np.sqrt(min(max(reliability, 0.0), 1.0)))


def truth_seeds(estimator_seed: int, k: int) -> list[int]:
    """k training seeds of the truth, all different from the estimator's: an estimator scored against its
    own batch order would be rewarded for fitting that order's noise."""
    return [estimator_seed + 1 + j for j in range(k)]


def linear_datamodeling_score(
    policy: Policy,
    train_store: TrajectoryStore,
    target_val_store: TrajectoryStore,
    scores: dict[str, np.ndarray],
    proxy: ProxyConfig | None = None,
    rng_seed: int = 0,
    n_models: int = 50,
    alpha: float = 0.5,
    mode: str = "resample",
    n_boot: int = 1000,
    subset_seed: int = 10_001,
    target_train_store: TrajectoryStore | None = None,
    include_target_train: bool = False,
) -> tuple[list[LdsRow], np.ndarray, np.ndarray]:
    """LDS of every estimator's scores on the same M fresh subsets: (rows, masks (M, E), true (M,))."""
    if n_models < 3:
        raise DatamilError(
            f"LDS needs at least 3 subsets (got n_models={n_models}); use >= 50 for a stable number"
        )
    masks = random_masks(
        train_store.n_episodes, n_models, alpha, np.random.default_rng([subset_seed, rng_seed])
    )
    true = true_surrogates(
        policy,
        train_store,
        target_val_store,
        masks,
        proxy or ProxyConfig(),
        rng_seed,
        mode,
        target_train_store=target_train_store,
        include_target_train=include_target_train,
    )
    rows = []
    for name, s in scores.items():
        rho, low, high = spearman_interval(
            predicted_surrogates(s, train_store, masks), true, n_boot, rng_seed
        )
        rows.append(LdsRow(name, rho, low, high))
    return rows, masks, true


def proxy_training_seconds(
    policy: Policy,
    train_store: TrajectoryStore,
    target_val_store: TrajectoryStore,
    proxy: ProxyConfig,
    seed: int,
    repeats: int = 2,
) -> float:
    """Warm wall time of one proxy training run (one short warm-up run first; min over `repeats`)."""
    pool, _ = prepare(policy, train_store, target_val_store)
    train_proxy(policy, pool, proxy.with_steps(min(10, proxy.steps)), seed)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        train_proxy(policy, pool, proxy, seed)
        times.append(time.perf_counter() - start)
    return min(times)


def run_estimators(
    policy: Policy,
    train_store: TrajectoryStore,
    target_val_store: TrajectoryStore,
    estimators: dict[str, dict],
    proxy: ProxyConfig,
    seed: int,
    target_train_store: TrajectoryStore | None = None,
    include_target_train: bool = False,
) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Scores and wall seconds of each registered estimator name -> its keyword arguments."""
    scores, walls = {}, {}
    data = {"target_train_store": target_train_store, "include_target_train": include_target_train}
    for name, kwargs in estimators.items():
        start = time.perf_counter()
        scores[name] = ESTIMATORS.get(name)(
            policy, train_store, target_val_store, seed, proxy=proxy, **data, **kwargs
        ).scores
        walls[name] = time.perf_counter() - start
    return scores, walls


@dataclass
class EstimatorCosts:
    """Warm costs: median wall seconds and median (wall ÷ the same round's proxy training run) per name."""

    scores: dict[str, np.ndarray]
    wall_s: dict[str, float]
    ratio: dict[str, float]
    train_s: float


def estimator_costs(
    policy: Policy,
    train_store: TrajectoryStore,
    target_val_store: TrajectoryStore,
    estimators: dict[str, dict],
    proxy: ProxyConfig,
    seed: int,
    repeats: int = 3,
    target_train_store: TrajectoryStore | None = None,
    include_target_train: bool = False,
) -> EstimatorCosts:
    """Scores and warm costs of every estimator, timed in `repeats` interleaved rounds.

    A first (cold) call carries one-off warm-up and flatters whatever it is divided into, so the proxy
    run and every estimator first run once on a 10-step proxy; then each round times one proxy training
    run and every estimator after it, and each ratio divides by its own round's training run
    (docs/notes.md, "Timing estimators"). Scores are deterministic; those of the last round are kept.
    """
    if repeats < 1:
        raise DatamilError(f"repeats={repeats} must be at least 1")
    data = {"target_train_store": target_train_store, "include_target_train": include_target_train}
    pool, _ = prepare(policy, train_store, target_val_store, **data)
    short = proxy.with_steps(min(10, proxy.steps))
    train_proxy(policy, pool, short, seed)
    run_estimators(policy, train_store, target_val_store, estimators, short, seed, **data)
    trains, walls = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        train_proxy(policy, pool, proxy, seed)
        trains.append(time.perf_counter() - start)
        scores, wall = run_estimators(policy, train_store, target_val_store, estimators, proxy, seed, **data)
        walls.append(wall)
    wall_s = {name: float(np.median([w[name] for w in walls])) for name in estimators}
    rounds = list(zip(walls, trains, strict=True))
    ratio = {name: float(np.median([w[name] / t for w, t in rounds])) for name in estimators}
    return EstimatorCosts(scores, wall_s, ratio, float(np.median(trains)))


def format_table(rows: list[LdsRow]) -> str:
    """One plain-text table: estimator, LDS [interval], wall time, wall time ÷ one proxy training run."""
    lines = [f"{'estimator':<14} {'LDS':>6}  {'95% CI':<15} {'wall s':>8} {'÷ train':>8}"]
    for r in rows:
        lines.append(
            f"{r.name:<14} {r.lds:>6.3f}  [{r.low:.2f}, {r.high:.2f}]{'':<3} {r.wall_s:>8.1f} {r.cost_ratio:>8.2f}"
        )
    return "\n".join(lines)


def compare_estimators(
    policy: Policy,
    train_store: TrajectoryStore,
    target_val_store: TrajectoryStore,
    estimators: dict[str, dict],
    proxy: ProxyConfig,
    seed: int = 0,
    n_models: int = 50,
    alpha: float = 0.5,
    mode: str = "resample",
    repeats: int = 3,
    target_train_store: TrajectoryStore | None = None,
    include_target_train: bool = False,
) -> tuple[list[LdsRow], float]:
    """Run every estimator, then score all of them on the same fresh subsets: (rows, one training run s).

    Costs are warm medians over `repeats` interleaved rounds (`estimator_costs`).
    """
    data = {"target_train_store": target_train_store, "include_target_train": include_target_train}
    costs = estimator_costs(policy, train_store, target_val_store, estimators, proxy, seed, repeats, **data)
    rows, _, _ = linear_datamodeling_score(
        policy, train_store, target_val_store, costs.scores, proxy, seed, n_models, alpha, mode, **data
    )
    for row in rows:
        row.wall_s, row.cost_ratio = costs.wall_s[row.name], costs.ratio[row.name]
    return rows, costs.train_s

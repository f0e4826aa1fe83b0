"""Classic datamodels (Ilyas et al. 2022): train M proxies on random alpha-subsets of the prior
trajectories, measure the surrogate of each, and fit a linear model

    S(subset) ~ b + sum_{e in subset} tau_e,                                                  (datamodel)

with ridge (or lasso) regression. tau_e is a per-TRAJECTORY score; it is spread evenly over the
trajectory's steps (tau_e / len_e), so the sum aggregation of `datamil.selection` gives tau_e back and a
subset's predicted surrogate is b + sum of its steps' scores, as for every other estimator.

The M proxies train in vmapped chunks of `chunk` models. Scale-out splits the same chunks across jobs:
shard k of K trains its share and writes it to a shard file (`run_regression_shard`), and
`gather_regression` fits the datamodel on all shards. The masks are the global masks of one seed and every
shard trains whole chunks, so K shards reproduce the single-process `run_regression`.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from sklearn.linear_model import LassoCV, RidgeCV

from datamil.data.store import TrajectoryStore
from datamil.datamodels.base import EstimateResult, check_scores, prepare, scores_only, timed
from datamil.datamodels.proxy import ProxyConfig, ensemble_surrogates_on_subsets, random_masks, subset_rows
from datamil.datamodels.shards import (
    chunk_indices,
    fingerprint,
    load_shards,
    run_settings,
    settings_json,
    shard_path,
    shard_share,
)
from datamil.datamodels.surrogate import Surrogate, TrainPool
from datamil.errors import DatamilError
from datamil.io import atomic_write_npz
from datamil.policies.base import Policy
from datamil.registry import configured


@dataclass(frozen=True)
class RegressionSpec:
    """Everything that decides the M proxies' subsets and training (and, with `model`, the fit)."""

    rng_seed: int = 0  # proxy seed (initialization, batch order) and the seed of the subset masks
    proxy: ProxyConfig = field(default_factory=ProxyConfig)
    n_models: int = 64  # M
    alpha: float = 0.5  # fraction of prior trajectories in each subset
    model: str = "ridge"  # ridge | lasso; only the fit uses it
    chunk: int = 32  # proxies trained together in one vmapped ensemble
    include_target_train: bool = False  # every proxy also trains on target-train

    def masks(self, n_episodes: int) -> np.ndarray:
        """(M, E) bool: the global subset masks; a pure function of (rng_seed, M, alpha, E)."""
        return random_masks(n_episodes, self.n_models, self.alpha, np.random.default_rng([self.rng_seed, 7]))

    def chunks(self) -> list[np.ndarray]:
        """Model indices of each vmapped chunk: [0, chunk), [chunk, 2 chunk), ..."""
        if self.chunk < 1 or self.n_models < 1:
            raise DatamilError(f"n_models={self.n_models} and chunk={self.chunk} must be at least 1")
        return chunk_indices(self.n_models, self.chunk)

    def shard_models(self, shard: int, n_shards: int) -> np.ndarray:
        """Model indices of shard k of K: a contiguous run of whole chunks (so results match one process)."""
        chunks = self.chunks()
        too_many = (
            f"n_shards={n_shards} is more than the {len(chunks)} vmapped chunks of n_models="
            f"{self.n_models}, chunk={self.chunk}; lower n_shards or the estimator's chunk (at most "
            f"{max(1, self.n_models // n_shards)}), since each shard trains whole chunks"
        )
        return np.concatenate([chunks[c] for c in shard_share(shard, n_shards, len(chunks), too_many)])


def fit_datamodel(masks: np.ndarray, values: np.ndarray, model: str = "ridge") -> tuple[np.ndarray, float]:
    """(E,) tau and intercept b of eq. (datamodel), regularization chosen by cross-validation."""
    x, y = masks.astype(np.float64), np.asarray(values, np.float64)
    if model == "ridge":
        fit = RidgeCV(alphas=np.logspace(-6, 3, 19)).fit(x, y)
    elif model == "lasso":
        fit = LassoCV(cv=min(5, len(y)), max_iter=20000, random_state=0).fit(x, y)
    else:
        raise DatamilError(f"unknown datamodel regression {model!r}; use 'ridge' or 'lasso'")
    return np.asarray(fit.coef_, np.float64), float(fit.intercept_)


def spread_over_steps(tau: np.ndarray, store: TrajectoryStore) -> np.ndarray:
    """(N,) per-step scores tau_e / len_e, so summing a trajectory's steps gives tau_e back."""
    return (tau / store.episode_lengths)[store.episode_of_step]


def train_surrogates(
    policy: Policy,
    pool: TrainPool,
    surrogate: Surrogate,
    masks: np.ndarray,
    n_prior_episodes: int,
    spec: RegressionSpec,
) -> np.ndarray:
    """(len(masks),) surrogate of a proxy trained on each mask's prior episodes, `spec.chunk` at a time."""
    rows = subset_rows(pool, n_prior_episodes, masks)
    return ensemble_surrogates_on_subsets(
        policy, pool, surrogate, rows, spec.proxy, spec.rng_seed, spec.chunk
    )


def datamodel_result(
    masks: np.ndarray, values: np.ndarray, train_store: TrajectoryStore, model: str, timings: dict
) -> EstimateResult:
    """Fit eq. (datamodel) on (M, E) masks and (M,) surrogates; per-step scores as `run_regression`."""
    with timed(timings, "fit"):
        tau, intercept = fit_datamodel(masks, values, model)
    scores = check_scores(spread_over_steps(tau, train_store), train_store.n_steps, "regression")
    info = {"tau": tau, "intercept": intercept, "masks": masks, "surrogates": values}
    return EstimateResult(scores, timings, info)


# datamil/configs/estimator/regression.yaml is the only source of these defaults
DEFAULTS = configured("estimator", "regression")


def run_regression(
    policy: Policy,
    train_store: TrajectoryStore,
    target_val_store: TrajectoryStore,
    rng_seed: int = 0,
    proxy: ProxyConfig = DEFAULTS["proxy"],
    n_models: int = DEFAULTS["n_models"],
    alpha: float = DEFAULTS["alpha"],
    model: str = DEFAULTS["model"],
    chunk: int = DEFAULTS["chunk"],
    include_target_train: bool = DEFAULTS["include_target_train"],
    target_train_store: TrajectoryStore | None = None,
) -> EstimateResult:
    """Regression datamodel scores (negative = helpful), per trajectory spread evenly over its steps.

    The M proxies share initialization and seed (they differ only in data) and train `chunk` at a time
    as one vmapped ensemble.
    """
    spec = RegressionSpec(rng_seed, proxy, n_models, alpha, model, chunk, include_target_train)
    pool, surrogate = prepare(policy, train_store, target_val_store, target_train_store, include_target_train)
    masks, timings = spec.masks(train_store.n_episodes), {}
    with timed(timings, "train_models"):
        values = train_surrogates(policy, pool, surrogate, masks, train_store.n_episodes, spec)
    return datamodel_result(masks, values, train_store, model, timings)


estimate_regression = scores_only(run_regression)


# ------------------------------------------------------------------------------------- shards
def shard_settings(
    policy: Policy,
    train_store: TrajectoryStore,
    target_val_store: TrajectoryStore,
    target_train_store: TrajectoryStore | None,
    spec: RegressionSpec,
    settings: dict | None = None,
) -> dict:
    """What every shard of one run must share: the spec (less the fit-only `model`), the policy, the data
    and the caller's `settings` (e.g. the resolved policy config)."""
    trained = {k: v for k, v in asdict(spec).items() if k != "model"}
    return run_settings(trained, policy, train_store, target_val_store, target_train_store, settings)


def run_regression_shard(
    policy: Policy,
    train_store: TrajectoryStore,
    target_val_store: TrajectoryStore,
    spec: RegressionSpec,
    shard: int,
    n_shards: int,
    shard_dir: str | Path,
    target_train_store: TrajectoryStore | None = None,
    settings: dict | None = None,
) -> Path:
    """Train shard k of K's proxies; write their model indices, masks, surrogates and the run's
    fingerprint to `shard_dir/shard-k-of-K.npz`, atomically (a killed job leaves no shard file)."""
    models = spec.shard_models(shard, n_shards)
    pool, surrogate = prepare(
        policy, train_store, target_val_store, target_train_store, spec.include_target_train
    )
    meta = shard_settings(policy, train_store, target_val_store, target_train_store, spec, settings)
    masks = spec.masks(train_store.n_episodes)[models]
    start = time.perf_counter()
    values = train_surrogates(policy, pool, surrogate, masks, train_store.n_episodes, spec)
    return atomic_write_npz(
        shard_path(shard_dir, shard, n_shards),
        fingerprint=np.array(fingerprint(meta)),
        shard=np.array(shard),
        n_shards=np.array(n_shards),
        models=models,
        masks=masks,
        values=values,
        train_s=np.array(time.perf_counter() - start),
        settings=np.array(settings_json(meta)),
    )


SHARD_KEYS = ("fingerprint", "shard", "n_shards", "models", "masks", "values", "train_s", "settings")


def gather_regression(
    policy: Policy,
    train_store: TrajectoryStore,
    target_val_store: TrajectoryStore,
    spec: RegressionSpec,
    n_shards: int,
    shard_dir: str | Path,
    target_train_store: TrajectoryStore | None = None,
    settings: dict | None = None,
) -> EstimateResult:
    """`run_regression`'s result, from the K shard files of this exact run (checked complete and consistent)."""
    meta = shard_settings(policy, train_store, target_val_store, target_train_store, spec, settings)
    shards = load_shards(
        shard_dir,
        n_shards,
        fingerprint(meta),
        SHARD_KEYS,
        what="the regression datamodel",
        settings="data, policy, seed or estimator",
        letter="k",
    )
    masks = spec.masks(train_store.n_episodes)
    values = np.full(spec.n_models, np.nan)
    for k, shard in enumerate(shards):
        models = spec.shard_models(k, n_shards)
        if not (np.array_equal(shard["models"], models) and np.array_equal(shard["masks"], masks[models])):
            raise DatamilError(
                f"{shard_path(shard_dir, k, n_shards)} does not hold shard {k}'s models and subsets; "
                "delete it and train that shard again"
            )
        values[models] = shard["values"]
    timings = {"train_models": float(sum(float(s["train_s"]) for s in shards))}
    return datamodel_result(masks, values, train_store, spec.model, timings)

"""Classic datamodels (Ilyas et al. 2022): train M proxies on random alpha-subsets of the prior
trajectories, measure the surrogate of each, and fit a linear model

    S(subset) ~ b + sum_{e in subset} tau_e,                                                  (datamodel)

with ridge (or lasso) regression. tau_e is a per-TRAJECTORY score; it is spread evenly over the
trajectory's steps (tau_e / len_e), so the sum aggregation of `datamil.selection` gives tau_e back and a
subset's predicted surrogate is b + sum of its steps' scores, as for every other estimator.
"""

from __future__ import annotations

import numpy as np
from sklearn.linear_model import LassoCV, RidgeCV

from datamil.data.store import TrajectoryStore
from datamil.datamodels.base import ESTIMATORS, EstimateResult, check_scores, prepare, scores_only, timed
from datamil.datamodels.proxy import ProxyConfig, ensemble_surrogates_on_subsets, random_masks, subset_rows
from datamil.errors import DatamilError
from datamil.policies.base import Policy


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


@ESTIMATORS.register("regression")
def run_regression(
    policy: Policy,
    train_store: TrajectoryStore,
    target_val_store: TrajectoryStore,
    rng_seed: int = 0,
    proxy: ProxyConfig | None = None,
    n_models: int = 64,
    alpha: float = 0.5,
    model: str = "ridge",
    chunk: int = 32,
    include_target_train: bool = False,
    target_train_store: TrajectoryStore | None = None,
) -> EstimateResult:
    """Regression datamodel scores (negative = helpful), per trajectory spread evenly over its steps.

    The M proxies share initialization and seed (they differ only in data) and train `chunk` at a time
    as one vmapped ensemble.
    """
    pool, surrogate = prepare(policy, train_store, target_val_store, target_train_store, include_target_train)
    cfg, timings = proxy or ProxyConfig(), {}
    masks = random_masks(train_store.n_episodes, n_models, alpha, np.random.default_rng([rng_seed, 7]))
    with timed(timings, "train_models"):
        rows = subset_rows(pool, train_store.n_episodes, masks)
        values = ensemble_surrogates_on_subsets(policy, pool, surrogate, rows, cfg, rng_seed, chunk)
    with timed(timings, "fit"):
        tau, intercept = fit_datamodel(masks, values, model)
    scores = check_scores(spread_over_steps(tau, train_store), train_store.n_steps, "regression")
    info = {"tau": tau, "intercept": intercept, "masks": masks, "surrogates": values}
    return EstimateResult(scores, timings, info)


estimate_regression = scores_only(run_regression)

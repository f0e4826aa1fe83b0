"""The estimator interface and its registry.

An estimator maps (policy, prior/train store, target-val store, seed) to one score per prior step:

    scores[i] ~ d S / d w_i   (or its linear-datamodel analogue tau_i)

Sign convention: NEGATIVE = including sample i LOWERS the surrogate S = helpful. A subset's predicted
surrogate is const + sum_{i in subset} scores[i], which is what the LDS check correlates with the truth.

Every estimator module defines `run_<name>(...) -> EstimateResult` (scores + cost split) and
`estimate_<name> = scores_only(run_<name>)` (-> np.ndarray), the `_target_` of datamil/configs/estimator/<name>.yaml.
That config file is the registration: ESTIMATORS lists the group and maps each name to `estimate.run`.
Its settings are the defaults of the run function (`configured("estimator", name)`), nowhere else.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from datamil.data.store import TrajectoryStore
from datamil.datamodels.proxy import ProxyConfig, fit_to_pool
from datamil.datamodels.surrogate import Surrogate, TrainPool, build_pool, check_policy
from datamil.errors import DatamilError
from datamil.registry import ConfigRegistry


@dataclass
class EstimateResult:
    """scores: (N_train_steps,) float64; timings: seconds per phase ("forward", "backward", ...)."""

    scores: np.ndarray
    timings: dict[str, float] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def total_s(self) -> float:
        return float(sum(self.timings.values()))


RunFn = Callable[..., EstimateResult]
ESTIMATORS = ConfigRegistry("estimator", "estimator", resolve=lambda estimate: estimate.run)


def prepare(
    policy: Any,
    train_store: TrajectoryStore,
    target_val_store: TrajectoryStore | None,
    target_train_store: TrajectoryStore | None = None,
    include_target_train: bool = False,
) -> tuple[TrainPool, Surrogate]:
    """Validate the inputs (one-line DatamilErrors) and build the training pool and the surrogate.

    With include_target_train the proxy also trains on target-train (pool = prior + target-train); only
    prior samples are scored.
    """
    check_policy(policy)
    surrogate = Surrogate.from_store(policy, target_val_store)
    if train_store is None or train_store.n_steps == 0:
        raise DatamilError("the prior (train) store is empty; there is nothing to score")
    if include_target_train and target_train_store is None:
        raise DatamilError(
            "include_target_train=True needs target_train_store; pass it or set the flag false"
        )
    return build_pool(policy, train_store, target_train_store if include_target_train else None), surrogate


def prepare_proxy(
    policy: Any,
    train_store: TrajectoryStore,
    target_val_store: TrajectoryStore | None,
    target_train_store: TrajectoryStore | None,
    include_target_train: bool,
    proxy: ProxyConfig,
) -> tuple[TrainPool, Surrogate, ProxyConfig]:
    """`prepare`, plus the proxy run as it will train on that pool (`fit_to_pool`): every estimator that
    trains a proxy differentiates or featurizes that run, and a benchmark timing it needs the same one."""
    pool, surrogate = prepare(policy, train_store, target_val_store, target_train_store, include_target_train)
    return pool, surrogate, fit_to_pool(proxy, pool.size)


def check_scores(scores: np.ndarray, n: int, name: str) -> np.ndarray:
    """(n,) finite float64 scores, or a one-line DatamilError naming the usual cause."""
    scores = np.asarray(scores, np.float64)
    if scores.shape != (n,):
        raise DatamilError(f"estimator {name!r} returned scores of shape {scores.shape}, expected ({n},)")
    if not np.all(np.isfinite(scores)):
        bad = int((~np.isfinite(scores)).sum())
        raise DatamilError(
            f"estimator {name!r} produced {bad} NaN/inf scores; use a smooth activation (GELU), Adam eps "
            "inside the root (>= 1e-3) and no gradient clipping in the proxy run"
        )
    return scores


@contextmanager
def timed(timings: dict[str, float], key: str) -> Iterator[None]:
    """Add the wall time of the block to timings[key]."""
    start = time.perf_counter()
    try:
        yield
    finally:
        timings[key] = timings.get(key, 0.0) + time.perf_counter() - start


def scores_only(run: RunFn) -> Callable[..., np.ndarray]:
    """`estimate_<name>`: the run function returning just the (N_train_steps,) scores."""

    @functools.wraps(run)
    def estimate(*args: Any, **kwargs: Any) -> np.ndarray:
        return run(*args, **kwargs).scores

    estimate.__doc__ = f"(N_train_steps,) scores of {run.__name__}; see its docstring."
    estimate.run = run  # type: ignore[attr-defined]  (what ESTIMATORS returns for the config's name)
    return estimate


def get_estimator(name: str) -> RunFn:
    """The run function of datamil/configs/estimator/<name>.yaml."""
    return ESTIMATORS.get(name)

"""Selection methods by name (`method=...` preset, or `selection.method=...`): scores → selected prior trajectories.

Every method gets the same request (data, budget, seed, and a way to get datamodel scores) and
returns per-trajectory scores (lower = preferred, shown in the report) plus the selected indices, so
datamil and every baseline write the same selection file under the same budget.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from datamil.errors import DatamilError
from datamil.registry import Registry, configured
from datamil.selection.aggregate import AGGREGATIONS
from datamil.selection.strategies import check_budget, iterative_prune, threshold, top_k

# The method presets are the only source of the defaults below (datamil/configs/method/<name>.yaml).
_TOPK, _THRESHOLD, _ITERATIVE, _REFINE = (
    configured("method", name) for name in ("topk", "threshold", "iterative", "refine")
)


@dataclass
class SelectionConfig:
    """How prior trajectories are chosen. Lower score = more helpful."""

    method: str = _TOPK["method"]  # a SELECTION_METHODS name: topk | threshold | iterative | baselines
    budget: float = _TOPK["budget"]  # fraction of prior trajectories kept
    cutoff: float = _THRESHOLD["cutoff"]  # threshold: keep trajectories scoring below this
    aggregate: str = _TOPK["aggregate"]  # per-sample -> per-trajectory: sum (datamodel-consistent) | mean
    rounds: int = _ITERATIVE["rounds"]  # iterative: re-estimation rounds
    drop_percentile: float = _ITERATIVE["drop_percentile"]  # iterative: drop active ones at/above this
    readmit_percentile: float = _ITERATIVE["readmit_percentile"]  # iterative: re-admit dropped at/below this
    pool_method: str = _REFINE["pool_method"]  # refine: the retrieval method that ranks the starting pool
    pool_share: float = _REFINE["pool_share"]  # refine: the pool's size, a fraction of the prior (> budget)
    keep_share: float = _REFINE["keep_share"]  # refine: the share of the prior kept (<= budget)
    cross_fit: bool = _TOPK["cross_fit"]  # datamodel methods: average with target-train/val swapped
    options: dict[str, Any] = field(default_factory=dict)  # method-specific settings (baselines)

    def __post_init__(self) -> None:
        """Refuse settings no selection can use now, not after the proxy scoring (which can take hours)."""
        check_budget(self.budget)
        if self.aggregate not in AGGREGATIONS:
            raise DatamilError(
                f"selection.aggregate={self.aggregate!r} is not one of {AGGREGATIONS}; use sum or mean"
            )
        if self.method == "threshold" and not math.isfinite(self.cutoff):
            raise DatamilError(f"selection.cutoff={self.cutoff} must be a finite score, e.g. 0.0")
        if self.method in RESCORING_METHODS:
            self._check_iterative()
        if self.method == "refine":
            self._check_pool()

    def _check_iterative(self) -> None:
        if not (isinstance(self.rounds, numbers.Integral) and self.rounds >= 1):
            raise DatamilError(f"selection.rounds={self.rounds!r} must be a whole number >= 1, e.g. 3")
        drop, readmit = self.drop_percentile, self.readmit_percentile
        if not 0 <= readmit < drop <= 100:
            raise DatamilError(
                f"selection.readmit_percentile={readmit} and drop_percentile={drop} need "
                "0 <= readmit < drop <= 100 (e.g. 20 and 80): re-admit only the best, drop only the worst"
            )

    def _check_pool(self) -> None:
        check_pool_method(self.pool_method)
        if not (isinstance(self.pool_share, numbers.Real) and self.budget < self.pool_share <= 1.0):
            raise DatamilError(
                f"selection.pool_share={self.pool_share!r} must be in (budget={self.budget}, 1]: the pool "
                "must hold more than the selection, e.g. pool_share=0.3 with budget=0.1"
            )
        check_budget(self.keep_share, "keep_share")


@dataclass
class SelectionRequest:
    """What a method may use. `datamodel_scores(active)` gives (E,) trajectory scores of a proxy trained
    on the `active` prior episodes (all of them when None), NaN outside `active`."""

    data: Any  # datamil.data.sources.TaskData
    cfg: SelectionConfig
    seed: int
    datamodel_scores: Callable[[np.ndarray | None], np.ndarray]


MethodResult = tuple[np.ndarray, np.ndarray]  # (E,) trajectory scores, (k,) selected episode indices
SELECTION_METHODS: Registry[Callable[[SelectionRequest], MethodResult]] = Registry("selection method")
DATAMODEL_METHODS = frozenset({"topk", "threshold", "iterative", "refine"})  # the ones that run the estimator
RESCORING_METHODS = frozenset({"iterative", "refine"})  # datamodel methods that re-estimate on subsets
# selections that ignore the budget
UNRANKED_METHODS = frozenset({"all_prior", "target_only", "same_task_success"})


def check_pool_method(name: str) -> None:
    """A pool comes from a method that ranks the prior by the target: not a datamodel method (a pool is
    what the datamodel is scored around) and not one that ignores the budget."""
    if name in DATAMODEL_METHODS | UNRANKED_METHODS:
        raise DatamilError(
            f"selection.pool_method={name!r} ranks nothing to refine; use a retrieval method such as "
            "action_similarity"
        )


def retrieval_pool(
    data: Any, method: str, share: float, seed: int, options: dict | None = None
) -> np.ndarray:
    """(k,) indices of the `share` of the prior trajectories that retrieval `method` ranks closest to the
    target: refine's starting pool, and the pool benchmarks/fidelity_at_scale.py --pool measures in."""
    check_pool_method(method)
    cfg = SelectionConfig(method=method, budget=share, options=dict(options or {}))
    _, pool = SELECTION_METHODS.get(method)(SelectionRequest(data, cfg, seed, _no_datamodel))
    return pool


def _no_datamodel(active: np.ndarray | None) -> np.ndarray:
    raise DatamilError("a retrieval pool is ranked without datamodel scores")


def keep_budget(scores: np.ndarray, active: np.ndarray, budget: float, n_episodes: int) -> np.ndarray:
    """The budget's top-k of the `active` episodes that survived pruning; the budget is a fraction of the
    whole prior, so a pool smaller than it is kept whole."""
    share_of_active = min(1.0, budget * n_episodes / len(active))
    return active[top_k(scores[active], share_of_active)]


@SELECTION_METHODS.register("topk")
def select_top_k(request: SelectionRequest) -> MethodResult:
    scores = request.datamodel_scores(None)
    return scores, top_k(scores, request.cfg.budget)


@SELECTION_METHODS.register("threshold")
def select_threshold(request: SelectionRequest) -> MethodResult:
    scores = request.datamodel_scores(None)
    return scores, threshold(scores, request.cfg.cutoff)


@SELECTION_METHODS.register("iterative")
def select_iterative(request: SelectionRequest) -> MethodResult:
    """Prune harmful trajectories over rounds of re-estimation, then keep the budget's top-k survivors."""
    cfg = request.cfg
    n = request.data.prior.n_episodes
    first = request.datamodel_scores(None)

    def rescore(active: np.ndarray) -> np.ndarray:
        return first if len(active) == n else request.datamodel_scores(active)

    active, last = iterative_prune(rescore, n, cfg.rounds, cfg.drop_percentile, cfg.readmit_percentile)
    return last, keep_budget(last, active, cfg.budget, n)


@SELECTION_METHODS.register("refine")
def select_refine(request: SelectionRequest) -> MethodResult:
    """DataMIL inside a retrieval pool: iterative pruning that starts from the `pool_share` of the prior a
    retrieval method ranks closest to the target, then keeps the budget's top-k survivors.

    Why: the datamodel is a linear model around the proxy's training set. Scored around the whole prior it
    ranks a 10% subset poorly (a subset is far from that point); scored around a pool already near the
    final selection, it only has to tell which of the retrieved trajectories help and which hurt.
    Trajectories outside the pool are never scored; they get the pool's worst score.

    It keeps the `keep_share` of the prior its last round ranks best (at most the budget): the datamodel
    ranks the target task's own trajectories first, and on the full prior's development tasks keeping 2%
    beat keeping up to the 10% budget (README, round 2g)."""
    cfg = request.cfg
    n = request.data.prior.n_episodes
    pool = retrieval_pool(request.data, cfg.pool_method, cfg.pool_share, request.seed, cfg.options)
    active, last = iterative_prune(
        request.datamodel_scores, n, cfg.rounds, cfg.drop_percentile, cfg.readmit_percentile, start=pool
    )
    scores = np.where(np.isfinite(last), last, np.nanmax(last))
    return scores, keep_budget(scores, active, min(cfg.budget, cfg.keep_share), n)

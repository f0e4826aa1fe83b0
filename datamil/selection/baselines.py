"""Selection baselines, registered next to DataMIL's datamodel methods (`method=random`, ...).

Each returns per-trajectory scores (lower = preferred) and the `budget` fraction of prior trajectories
with the lowest scores, so every baseline writes the same selection file under the same budget as DataMIL.
Method-specific settings come from `SelectionConfig.options`; an unknown option fails loudly, so a typo
in a sweep cannot silently run the defaults.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import numpy as np

from datamil.errors import DatamilError
from datamil.selection.aggregate import per_trajectory
from datamil.selection.methods import SELECTION_METHODS, MethodResult, SelectionRequest
from datamil.selection.retrieval import (
    Featurizer,
    VAEConfig,
    cosine_similarity_to_set,
    dtw_costs,
    embed,
    knn_distance,
    sub_trajectories,
    train_vae,
)
from datamil.selection.strategies import top_k


def options_of(request: SelectionRequest, defaults: dict[str, Any]) -> dict[str, Any]:
    """`defaults` updated with `cfg.options`; keys the method does not know are an error."""
    given = dict(request.cfg.options or {})
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise DatamilError(
            f"selection method {request.cfg.method!r} has no option(s) {unknown}; "
            f"its options are {sorted(defaults)}"
        )
    return {**defaults, **given}


def ranked(scores: np.ndarray, request: SelectionRequest) -> MethodResult:
    """The common ending: keep the budget's lowest-scoring trajectories."""
    scores = np.asarray(scores, np.float64)
    return scores, top_k(scores, request.cfg.budget)


@SELECTION_METHODS.register("random")
def select_random(request: SelectionRequest) -> MethodResult:
    """Uniform over prior trajectories; a function of the seed only."""
    rng = np.random.default_rng([int(request.seed), 0x5E1EC7])
    return ranked(rng.random(request.data.prior.n_episodes), request)


@SELECTION_METHODS.register("all_prior")
def select_all_prior(request: SelectionRequest) -> MethodResult:
    """Every prior trajectory (the budget does not apply): the "more data is better" reference."""
    n = request.data.prior.n_episodes
    return np.zeros(n), np.arange(n)


@SELECTION_METHODS.register("target_only")
def select_target_only(request: SelectionRequest) -> MethodResult:
    """Nothing from the prior: co-training then trains on the target demos alone."""
    return np.zeros(request.data.prior.n_episodes), np.zeros(0, np.int64)


# ------------------------------------------------------------------------------------ k-NN similarity
KNN_DEFAULTS = {"k": 5, "state_dims": None}


def knn_similarity(request: SelectionRequest, kind: str) -> MethodResult:
    """Mean over a trajectory's steps of the distance from each (standardized) prior step to its k nearest
    target-train steps: trajectories that stay close to the target demos score low."""
    opts = options_of(request, KNN_DEFAULTS)
    data = request.data
    featurize = Featurizer.fit([data.prior, data.target_train], kind, opts["state_dims"])
    distance = knn_distance(featurize(data.prior), featurize(data.target_train), opts["k"])
    return ranked(per_trajectory(distance, data.prior, "mean"), request)


@SELECTION_METHODS.register("state_similarity")
def select_state_similarity(request: SelectionRequest) -> MethodResult:
    return knn_similarity(request, "state")


@SELECTION_METHODS.register("action_similarity")
def select_action_similarity(request: SelectionRequest) -> MethodResult:
    return knn_similarity(request, "action")


@SELECTION_METHODS.register("state_action_similarity")
def select_state_action_similarity(request: SelectionRequest) -> MethodResult:
    return knn_similarity(request, "state_action")


# ------------------------------------------------------------------------------------ Behavior Retrieval
BR_DEFAULTS = {**asdict(VAEConfig()), "reduce": "max"}


@SELECTION_METHODS.register("behavior_retrieval")
def select_behavior_retrieval(request: SelectionRequest) -> MethodResult:
    """Behavior Retrieval (Du et al. 2023): a VAE on the prior's (state, action) pairs; each prior pair is
    scored by the cosine similarity of its embedding to the target-train embeddings (max over them), and a
    trajectory by the mean over its steps (negated, so that lower = more similar = preferred)."""
    opts = options_of(request, BR_DEFAULTS)
    reduce = opts.pop("reduce")
    data = request.data
    featurize = Featurizer.fit([data.prior, data.target_train], "state_action")
    prior_x = featurize(data.prior)
    vae = train_vae(prior_x, VAEConfig(**opts), request.seed)
    similarity = cosine_similarity_to_set(
        embed(vae, prior_x), embed(vae, featurize(data.target_train)), reduce
    )
    return ranked(-per_trajectory(similarity, data.prior, "mean"), request)


# ------------------------------------------------------------------------------------ STRAP
STRAP_DEFAULTS = {"segment_length": 20, "stride": 20, "state_dims": None, "max_cells": 4_000_000}


def strap_scores(costs: np.ndarray) -> np.ndarray:
    """(E,) trajectory scores from (Q, E) sub-trajectory match costs.

    Each query retrieves its own lowest-cost matches (as STRAP does per sub-trajectory), so a trajectory
    is as good as its best rank over the queries; ties between equal ranks go to the lower mean cost
    (scaled into [0, 1) so it never overrides a rank).
    """
    ranks = np.argsort(np.argsort(costs, axis=1, kind="stable"), axis=1, kind="stable")
    mean_cost = costs.mean(0)
    tie = (mean_cost - mean_cost.min()) / (np.ptp(mean_cost) + 1e-12) * 0.999
    return ranks.min(0) + tie


@SELECTION_METHODS.register("strap")
def select_strap(request: SelectionRequest) -> MethodResult:
    """STRAP (Memmel et al. 2024): target-train demos are cut into sub-trajectories, each is matched to every
    prior trajectory by subsequence DTW on standardized states, and the lowest-cost matches are retrieved.
    The selection unit is the whole prior trajectory that holds a match (the common selection file)."""
    opts = options_of(request, STRAP_DEFAULTS)
    data = request.data
    length, stride = int(opts["segment_length"]), int(opts["stride"])
    if length < 1 or stride < 1:
        raise DatamilError(f"strap needs segment_length >= 1 and stride >= 1, got {length} and {stride}")
    featurize = Featurizer.fit([data.prior, data.target_train], "state", opts["state_dims"])
    queries = sub_trajectories(featurize(data.target_train), data.target_train.offsets, length, stride)
    costs = dtw_costs(queries, featurize(data.prior), data.prior.offsets, int(opts["max_cells"])) / length
    return ranked(strap_scores(costs), request)

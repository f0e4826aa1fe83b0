"""TRAK (Park et al. 2023) through the `traker` package: an attribution method implemented outside this
project, run on our proxy and surrogate so that our own estimators have an independent yardstick.

TRAK featurizes every training sample by a random projection of its output gradient at each of
`n_models` independently trained proxies, phi_i = P^T grad f(z_i; theta), and scores train sample i for
target j as

    tau_ij = sum_models phi_j^T (Phi^T Phi + lambda I)^{-1} phi_i Q_i / n_models,                 (trak)

with f = the per-sample action loss here (Q = d loss / d f = 1). A positive tau_ij says that including i
lowers the loss on j, so our score (negative = helpful) is minus the mean over the target-val samples j.
Featurizing a million prior steps on a CPU is slow, so `steps_per_trajectory` featurizes that many
evenly spaced steps of each trajectory and spreads each trajectory's scaled sum over its steps: the
trajectory sums, which selection and the LDS use, stay unbiased.
"""

from __future__ import annotations

import tempfile

import numpy as np
import torch
from torch import Tensor

from datamil.data.store import TrajectoryStore
from datamil.datamodels.base import EstimateResult, check_scores, prepare_proxy, scores_only, timed
from datamil.datamodels.proxy import ProxyConfig, train_proxy
from datamil.datamodels.surrogate import TrainPool, sampled_rows, spread_to_steps, take
from datamil.errors import DatamilError
from datamil.policies.base import Batch, Policy
from datamil.registry import configured


def loss_output(policy: Policy, keys: list[str]):
    """traker's model-output function: f(z; theta) = the per-sample loss of one sample, Q = 1."""
    from trak.modelout_functions import AbstractModelOutput

    class LossOutput(AbstractModelOutput):
        def __init__(self) -> None:
            pass

        def get_output(self, model, weights, buffers, *sample: Tensor) -> Tensor:  # one sample (vmapped)
            batch = {k: v.unsqueeze(0) for k, v in zip(keys, sample, strict=True)}
            return policy.per_sample_loss(dict(weights), batch)[0]

        def get_out_to_loss_grad(self, model, weights, buffers, batch) -> Tensor:
            return torch.ones(len(batch[0]), 1, dtype=batch[0].dtype, device=batch[0].device)

    return LossOutput()


def trak_scores(
    policy: Policy,
    pool: TrainPool,
    val: Batch,
    models: list[dict[str, Tensor]],
    rows: np.ndarray,
    proj_dim: int,
    seed: int,
    chunk: int,
) -> np.ndarray:
    """(len(rows),) mean over target-val samples of eq. (trak), computed by traker with its basic
    (torch) projector on the pool's device: the CPU unless the policy was moved to a GPU."""
    from trak import TRAKer
    from trak.projectors import BasicProjector, ProjectionType

    keys = sorted(k for k in pool.data)
    n_params = sum(p.numel() for p in models[0].values())
    dtype = next(iter(models[0].values())).dtype
    device = str(pool.device)
    projector = BasicProjector(
        n_params, proj_dim, seed, ProjectionType.rademacher, device, dtype=dtype, block_size=128
    )
    with tempfile.TemporaryDirectory(prefix="datamil-trak-") as save_dir:
        traker = TRAKer(
            policy, loss_output(policy, keys), len(rows), save_dir, load_from_save_dir=True,
            device=device, projector=projector, use_half_precision=False, logging_level=40,
        )  # fmt: skip
        for model_id, params in enumerate(models):
            traker.load_checkpoint(params | dict(policy.named_buffers()), model_id)
            for lo in range(0, len(rows), chunk):
                batch = take(pool.data, torch.from_numpy(rows[lo : lo + chunk]).to(pool.device))
                traker.featurize([batch[k] for k in keys], num_samples=len(batch[keys[0]]))
        traker.finalize_features()  # frees the projection matrix; an unknown model id makes it redraw
        projector.model_id = -1
        n_val = len(val[keys[0]])
        for model_id, params in enumerate(models):
            traker.start_scoring_checkpoint(
                "target_val", params | dict(policy.named_buffers()), model_id, n_val
            )
            for lo in range(0, n_val, chunk):
                part = {k: v[lo : lo + chunk] for k, v in val.items()}
                traker.score([part[k] for k in keys], num_samples=len(part[keys[0]]))
        tau = np.asarray(traker.finalize_scores("target_val"), np.float64)  # (len(rows), n_val)
    return -tau.mean(axis=1)


# datamil/configs/estimator/trak.yaml is the only source of these defaults
DEFAULTS = configured("estimator", "trak")


def run_trak(
    policy: Policy,
    train_store: TrajectoryStore,
    target_val_store: TrajectoryStore,
    rng_seed: int = 0,
    proxy: ProxyConfig = DEFAULTS["proxy"],
    n_models: int = DEFAULTS["n_models"],
    proj_dim: int = DEFAULTS["proj_dim"],
    steps_per_trajectory: int | None = DEFAULTS["steps_per_trajectory"],
    chunk_size: int = DEFAULTS["chunk_size"],
    include_target_train: bool = DEFAULTS["include_target_train"],
    target_train_store: TrajectoryStore | None = None,
) -> EstimateResult:
    """TRAK scores of every prior step (negative = helpful) from `n_models` proxies of seeds rng_seed, ..."""
    try:
        import trak  # noqa: F401
    except ImportError as err:
        raise DatamilError("estimator=trak needs the traker package: pip install 'datamil[trak]'") from err
    pool, surrogate, cfg = prepare_proxy(
        policy, train_store, target_val_store, target_train_store, include_target_train, proxy
    )
    timings: dict[str, float] = {}
    with timed(timings, "train"):
        models = [train_proxy(policy, pool, cfg, rng_seed + m) for m in range(n_models)]
    with timed(timings, "featurize_and_score"):
        rows = sampled_rows(pool, steps_per_trajectory)
        row_scores = trak_scores(policy, pool, surrogate.val, models, rows, proj_dim, rng_seed, chunk_size)
    scores = check_scores(spread_to_steps(pool, rows, row_scores), train_store.n_steps, "trak")
    return EstimateResult(scores, timings, {"featurized": len(rows), "n_models": n_models})


estimate_trak = scores_only(run_trak)

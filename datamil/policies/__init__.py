"""Policies register under the same short name as their Hydra option (`policy=bc_mlp`)."""

from datamil.policies import diffusion, gaussian, mlp, vision  # noqa: F401  (registers)
from datamil.policies.base import POLICIES, Batch, Params, Policy

__all__ = ["POLICIES", "Batch", "Params", "Policy"]

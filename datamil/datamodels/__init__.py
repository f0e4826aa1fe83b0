"""Datamodel estimators on the surrogate target; each registers in ESTIMATORS under its Hydra option name."""

from datamil.datamodels import features, influence, metagrad, regression, trak, truncated  # noqa: F401  (registers)
from datamil.datamodels.base import ESTIMATORS, EstimateResult, get_estimator
from datamil.datamodels.proxy import ProxyConfig, smooth_optim
from datamil.datamodels.surrogate import Surrogate

__all__ = ["ESTIMATORS", "EstimateResult", "ProxyConfig", "Surrogate", "get_estimator", "smooth_optim"]

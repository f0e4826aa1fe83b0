"""Policies: the Policy base (per-sample loss, act, named optional capabilities), the built-in policies,
and `build_policy` (a config's factory sized to the data). A policy registers by its config file,
datamil/configs/policy/<name>.yaml with `_target_: <its class>`; POLICIES is derived from that group."""

from datamil.policies.base import POLICIES, Batch, Params, Policy
from datamil.policies.build import PolicyFactory, build_policy, reads_state

__all__ = ["POLICIES", "Batch", "Params", "Policy", "PolicyFactory", "build_policy", "reads_state"]

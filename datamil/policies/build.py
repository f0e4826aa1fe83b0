"""Policy construction: a config's policy factory sized and normalized for the data it will read.

Every stage builds its policy here (the proxy of selection, the co-trained policy, the regression shards),
so a policy is sized the same way wherever it is trained.
"""

from __future__ import annotations

from collections.abc import Callable

from datamil.data.schema import is_image_key
from datamil.data.store import TrajectoryStore
from datamil.errors import DatamilError
from datamil.policies.base import OBS_STATE_KEY, Policy

PolicyFactory = Callable[..., Policy]  # e.g. hydra.utils.instantiate(cfg.policy): a partial of the class


def policy_class(factory: PolicyFactory) -> type:
    """The class a factory builds (a functools.partial of it, as `_partial_: true` configs give, or itself)."""
    return getattr(factory, "func", factory)


def build_policy(factory: PolicyFactory, store: TrajectoryStore) -> Policy:
    """Instantiate a policy sized and normalized for `store` (dims and statistics come from the data).

    Policies with the images capability (`reads_images`) also get each camera's per-step shape, and work
    without a state.
    """
    if getattr(policy_class(factory), "reads_images", False):  # a factory may build a non-Policy callable
        return _build_image_policy(factory, store)
    if OBS_STATE_KEY not in store.arrays:
        raise DatamilError(f"the data has no {OBS_STATE_KEY!r}; state-based policies need a state vector")
    return factory(
        obs_dim=int(store.arrays[OBS_STATE_KEY].shape[1]),
        action_dim=store.action_dim,
        state_stats=store.pooled_stats(OBS_STATE_KEY),
    )


def _build_image_policy(factory: PolicyFactory, store: TrajectoryStore) -> Policy:
    """An image policy: (H, W, C) of every image array; state dim and statistics when there is a state."""
    shapes = {
        name[len("obs/") :]: tuple(value.shape[1:])
        for name, value in store.arrays.items()
        if name.startswith("obs/") and is_image_key(name[len("obs/") :])
    }
    has_state = OBS_STATE_KEY in store.arrays
    return factory(
        obs_dim=int(store.arrays[OBS_STATE_KEY].shape[1]) if has_state else 0,
        action_dim=store.action_dim,
        state_stats=store.pooled_stats(OBS_STATE_KEY) if has_state else None,
        image_shapes=shapes,
    )


def reads_state(factory: PolicyFactory) -> bool:
    """Whether the policy reads the state vector: state policies do, image policies unless use_state=False."""
    if not getattr(policy_class(factory), "reads_images", False):
        return True
    return bool(getattr(factory, "keywords", {}).get("use_state", True))

"""What the sharded-estimator tests share: a small MLP proxy, and training and gathering the shards of
any sharded estimator (its `run_*_shard` and `gather_*`) on the `shard_data` fixture of conftest.py."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from datamil.policies.mlp import MLPPolicy


def tiny_mlp(prior) -> MLPPolicy:
    """The proxy policy of every shard and gather in these tests (16-dim states, one hidden layer of 8)."""
    return MLPPolicy(16, prior.action_dim, hidden=(8,), state_stats=prior.pooled_stats("obs/state"))


def train_shards(
    run_shard: Callable, data, shard_dir: Path, spec: Any, shards: Iterable[int], n_shards: int
) -> None:
    """Train these shards of n_shards with `run_shard`, each with a fresh proxy, as separate jobs would."""
    prior, val, tt = data
    for s in shards:
        run_shard(tiny_mlp(prior), prior, val, spec, s, n_shards, shard_dir, tt)


def gather_shards(gather: Callable, data, shard_dir: Path, spec: Any, n_shards: int):
    """What `gather` makes of the n_shards shard files in shard_dir."""
    prior, val, tt = data
    return gather(tiny_mlp(prior), prior, val, spec, n_shards, shard_dir, tt)

"""BC with an MLP on the state vector: the reference proxy policy for state-based datamodels."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from datamil.data.normalization import NormStats
from datamil.policies.base import ACTION, OBS_STATE_KEY, Batch, Normalizer, Policy
from datamil.registry import configured

ACTIVATIONS = {"gelu": nn.GELU, "relu": nn.ReLU, "tanh": nn.Tanh, "silu": nn.SiLU}


def mlp(sizes: Sequence[int], activation: str = "gelu") -> nn.Sequential:
    """Linear layers with `activation` between them (none after the last).

    GELU by default: exact metagradients need a smooth loss surface (docs/notes.md, "Metasmoothness").
    """
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(ACTIVATIONS[activation]())
    return nn.Sequential(*layers)


# datamil/configs/policy/bc_mlp.yaml is the only source of these defaults
DEFAULTS = configured("policy", "bc_mlp")


class MLPPolicy(Policy):
    """Deterministic BC: action = tanh(MLP(normalized state)); per-sample loss = MSE to the demo action.

    Predictions live in [-1, 1] (the tanh squash keeps the loss smooth): MetaWorld's action box, and the
    space `data.normalization=q01_q99` maps every dataset's actions into. Demo actions are not clamped:
    raw actions outside [-1, 1] are a data problem to fix by normalization, not to hide.
    """

    def __init__(
        self,
        obs_dim: int,
        action_dim: int,
        hidden: Sequence[int] = DEFAULTS["hidden"],
        activation: str = DEFAULTS["activation"],
        state_stats: NormStats | None = None,
    ) -> None:
        super().__init__()
        self.obs_norm = Normalizer(state_stats, obs_dim)
        self.net = mlp([obs_dim, *hidden, action_dim], activation)

    def predict(self, obs: dict[str, Tensor]) -> Tensor:
        return torch.tanh(self.net(self.obs_norm(obs[OBS_STATE_KEY].float())))

    def loss_fn(self, batch: Batch) -> Tensor:
        target = batch[ACTION].float()
        return ((self.predict(batch) - target) ** 2).mean(dim=-1)

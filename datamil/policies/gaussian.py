"""BC with a tanh-squashed Gaussian: a likelihood loss for multimodal-ish, noisy demonstrations.

The per-sample loss is the exact negative log-likelihood of the demo action a in (-1, 1) under
a = tanh(u), u ~ N(mu(s), sigma(s)^2), change of variables included:
    -log p(a | s) = -log N(atanh(a); mu, sigma) + sum_d log(1 - a_d^2).
The Jacobian term does not depend on the parameters, but keeping it makes the loss a true NLL (comparable
across datasets and finite for every demo action after clipping to (-1 + 1e-4, 1 - 1e-4)). That clip is
the likelihood's domain, not a units fix: actions should already be in [-1, 1] (MetaWorld's box, or
normalized by `data.normalization=q01_q99`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from datamil.data.normalization import NormStats
from datamil.policies.base import ACTION, OBS_STATE_KEY, Batch, Normalizer, Policy
from datamil.policies.mlp import mlp
from datamil.registry import configured

ACTION_CLIP = 1.0 - 1e-4  # atanh(1 - 1e-4) ~ 4.95: finite, and the Jacobian term stays bounded
_LOG_2PI = math.log(2.0 * math.pi)


# datamil/configs/policy/bc_gaussian.yaml is the only source of these defaults
DEFAULTS = configured("policy", "bc_gaussian")


class GaussianPolicy(Policy):
    """obs -> (mu, log sigma) by an MLP; act = tanh(mu), the mode of the squashed distribution's core.

    log sigma is squashed smoothly into [log_std_min, log_std_max] (no hard clamp, so the loss surface
    stays smooth for metagradients; GELU for the same reason, docs/notes.md, "Metasmoothness").
    """

    def __init__(
        self,
        obs_dim: int,
        action_dim: int,
        hidden: Sequence[int] = DEFAULTS["hidden"],
        activation: str = DEFAULTS["activation"],
        state_stats: NormStats | None = None,
        log_std_min: float = DEFAULTS["log_std_min"],
        log_std_max: float = DEFAULTS["log_std_max"],
    ) -> None:
        super().__init__()
        self.action_dim = action_dim
        self.log_std_min, self.log_std_max = log_std_min, log_std_max
        self.obs_norm = Normalizer(state_stats, obs_dim)
        self.net = mlp([obs_dim, *hidden, 2 * action_dim], activation)

    def distribution(self, obs: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """(mu, log_std), each (B, A), of the pre-squash Gaussian."""
        out = self.net(self.obs_norm(obs[OBS_STATE_KEY].float()))
        mu, raw = out.split(self.action_dim, dim=-1)
        span = self.log_std_max - self.log_std_min
        log_std = self.log_std_min + span * torch.sigmoid(raw)
        return mu, log_std

    def predict(self, obs: dict[str, Tensor]) -> Tensor:
        """(B, A) deterministic action tanh(mu): tanh applied once."""
        mu, _ = self.distribution(obs)
        return torch.tanh(mu)

    def loss_fn(self, batch: Batch) -> Tensor:
        """(B,) NLL of the demo action under the tanh-squashed Gaussian (nats, summed over action dims)."""
        mu, log_std = self.distribution(batch)
        a = batch[ACTION].float().clamp(-ACTION_CLIP, ACTION_CLIP)
        u = torch.atanh(a)
        z = (u - mu) * torch.exp(-log_std)
        gaussian_nll = 0.5 * z.pow(2) + log_std + 0.5 * _LOG_2PI
        log_det = torch.log1p(-a.pow(2))  # log |da/du| = log(1 - tanh(u)^2)
        return (gaussian_nll + log_det).sum(dim=-1)

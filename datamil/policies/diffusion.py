"""Diffusion policy on the state vector: DDPM training of an action-chunk denoiser, DDIM sampling.

Chunks: the policy predicts actions [t, t+H) from the state at t and the controller executes the first
`n_action_steps` of them (Chi et al. 2023). Training batches carry the chunk under ACTION_CHUNK.

Per-sample loss, a FIXED function of the parameters: the DDPM noise eps and timestep k of a sample are
drawn by a counter-based hash of (global step id, noise_seed), not from a global RNG, so the same
params and batch give the same loss (what datamodel estimators differentiate), every step id keeps
its own noise across steps and runs, and the draw is vectorized and vmap-safe (integer torch ops only).
    loss_i = mean_{h,a} (eps_theta(sqrt(ab_k) x0 + sqrt(1 - ab_k) eps, k, s) - eps)^2   (Ho et al. 2020, eq. 14)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from datamil.data.normalization import NormStats
from datamil.data.sampling import ACTION_CHUNK, ACTION_CHUNK_MASK, action_chunks
from datamil.errors import DatamilError
from datamil.policies.base import ACTION, INDEX, OBS_STATE_KEY, Batch, Normalizer, Policy
from datamil.policies.mlp import ACTIVATIONS, mlp
from datamil.registry import configured

_MASK32 = 0xFFFFFFFF
_GOLDEN = 0x9E3779B9  # Weyl increment between the counters of one sample


def _mix32(x: Tensor) -> Tensor:
    """A 32-bit integer hash (Wellons' lowbias32 variant) on int64 tensors holding values < 2^32.

    Both multipliers are < 2^31, so products stay below 2^63: no signed overflow anywhere.
    """
    x = x ^ (x >> 16)
    x = (x * 0x21F0AAAD) & _MASK32
    x = x ^ (x >> 15)
    x = (x * 0x735A2D97) & _MASK32
    return x ^ (x >> 15)


def hash_uniform(index: Tensor, seed: int, n: int, stream: int = 0) -> Tensor:
    """(B, n) float32 uniforms in (0, 1), a pure function of (index (B,) int64, seed, stream)."""
    index = index.long()
    key = _mix32((index & _MASK32) ^ _mix32(torch.full_like(index, (seed * 2 + 1) & _MASK32)))
    key = _mix32(key ^ _mix32((index >> 32) + (stream & 0xFFFF) * 0x10001))
    counters = torch.arange(1, n + 1, dtype=torch.int64, device=index.device) * _GOLDEN
    bits = _mix32((key[:, None] + counters[None, :]) & _MASK32)
    return ((bits >> 8).float() + 0.5) * (1.0 / 2**24)


def hash_normal(index: Tensor, seed: int, n: int, stream: int = 0) -> Tensor:
    """(B, n) standard normals by Box-Muller on hash_uniform draws."""
    half = (n + 1) // 2
    u = hash_uniform(index, seed, 2 * half, stream)
    radius = torch.sqrt(-2.0 * torch.log(u[:, :half]))
    angle = 2.0 * math.pi * u[:, half:]
    return torch.cat([radius * torch.cos(angle), radius * torch.sin(angle)], dim=-1)[:, :n]


def cosine_alpha_bars(steps: int, s: float = 0.008) -> Tensor:
    """(T,) cumulative alphas of the squared-cosine schedule (Nichol & Dhariwal 2021), betas capped at 0.999."""
    t = np.arange(steps + 1) / steps
    f = np.cos((t + s) / (1 + s) * np.pi / 2) ** 2
    betas = np.minimum(1 - f[1:] / f[:-1], 0.999)
    return torch.as_tensor(np.cumprod(1 - betas), dtype=torch.float32)


def timestep_embedding(k: Tensor, dim: int) -> Tensor:
    """(B, dim) sinusoidal embedding of integer timesteps k (B,)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10_000.0) * torch.arange(half, dtype=torch.float32, device=k.device) / half)
    angles = k.float()[:, None] * freqs[None, :]
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)


# datamil/configs/policy/diffusion.yaml is the only source of these defaults
DEFAULTS = configured("policy", "diffusion")


class DiffusionPolicy(Policy):
    """eps_theta(x_k, k, s): an MLP on [noisy chunk (H*A), normalized state, timestep embedding]."""

    def __init__(
        self,
        obs_dim: int,
        action_dim: int,
        horizon: int = DEFAULTS["horizon"],
        n_action_steps: int = DEFAULTS["n_action_steps"],
        hidden: Sequence[int] = DEFAULTS["hidden"],
        activation: str = DEFAULTS["activation"],
        time_embed_dim: int = DEFAULTS["time_embed_dim"],
        train_timesteps: int = DEFAULTS["train_timesteps"],
        inference_steps: int = DEFAULTS["inference_steps"],
        noise_seed: int = DEFAULTS["noise_seed"],
        mask_padding: bool = DEFAULTS["mask_padding"],
        sample_seed: int = DEFAULTS["sample_seed"],
        state_stats: NormStats | None = None,
    ) -> None:
        super().__init__()
        if not 1 <= n_action_steps <= horizon:
            raise DatamilError(f"n_action_steps={n_action_steps} must be in [1, horizon={horizon}]")
        self.obs_dim, self.action_dim, self.horizon = obs_dim, action_dim, horizon
        self.n_action_steps, self.inference_steps = n_action_steps, inference_steps
        self.train_timesteps, self.noise_seed, self.mask_padding = train_timesteps, noise_seed, mask_padding
        self.time_embed_dim = time_embed_dim
        self.obs_norm = Normalizer(state_stats, obs_dim)
        self.time_mlp = nn.Sequential(nn.Linear(time_embed_dim, time_embed_dim), ACTIVATIONS[activation]())
        self.net = mlp(
            [horizon * action_dim + obs_dim + time_embed_dim, *hidden, horizon * action_dim], activation
        )
        self.register_buffer("alpha_bars", cosine_alpha_bars(train_timesteps), persistent=False)
        self._generator = torch.Generator().manual_seed(sample_seed)

    def reset_sampler(self, seed: int) -> None:
        """Reseed the initial-noise generator of `predict`, for reproducible rollouts."""
        self._generator.manual_seed(seed)

    def extra_batch_arrays(self, store: Any, step_ids: np.ndarray) -> dict[str, np.ndarray]:
        chunks, mask = action_chunks(store.arrays[ACTION], store.offsets, step_ids, self.horizon)
        return {ACTION_CHUNK: chunks, ACTION_CHUNK_MASK: mask}

    def denoise(self, x: Tensor, k: Tensor, state: Tensor) -> Tensor:
        """Predicted noise (B, H, A) of noisy chunks x (B, H, A) at timesteps k (B,) given normalized state (B, D)."""
        features = [x.flatten(1), state, self.time_mlp(timestep_embedding(k, self.time_embed_dim))]
        return self.net(torch.cat(features, dim=-1)).view_as(x)

    def loss_fn(self, batch: Batch) -> Tensor:
        """(B,) noise-prediction MSE with (eps, k) drawn from (batch["index"], noise_seed)."""
        if ACTION_CHUNK not in batch:
            raise DatamilError(
                "diffusion batches need 'action_chunk'; build them with datamil.training.gather_batch"
            )
        x0 = batch[ACTION_CHUNK].float()  # in [-1, 1] (MetaWorld, or data.normalization=q01_q99); not clamped
        b, index = x0.shape[0], batch[INDEX]
        eps = hash_normal(index, self.noise_seed, self.horizon * self.action_dim).view_as(x0)
        u = hash_uniform(index, self.noise_seed, 1, stream=1)[:, 0]
        k = torch.clamp((u * self.train_timesteps).long(), max=self.train_timesteps - 1)
        ab = self.alpha_bars[k].view(b, 1, 1)
        noisy = torch.sqrt(ab) * x0 + torch.sqrt(1 - ab) * eps
        err = (self.denoise(noisy, k, self.obs_norm(batch[OBS_STATE_KEY].float())) - eps).pow(2)
        if not self.mask_padding:
            return err.mean(dim=(1, 2))
        mask = batch[ACTION_CHUNK_MASK].to(err.dtype)[:, :, None]
        return (err * mask).sum(dim=(1, 2)) / (mask.sum(dim=(1, 2)) * self.action_dim)

    def predict(self, obs: dict[str, Tensor]) -> Tensor:
        """(B, H, A) action chunk by DDIM (eta = 0) in `inference_steps` steps, x0 clipped to [-1, 1].

        The initial noise is drawn on the CPU (the seeded sampler) and moved to the parameters' device,
        so a sampler seed gives the same draws on every device; every other tensor is built there."""
        device = self.time_mlp[0].weight.device  # the params passed to functional_call, or the module's
        state = self.obs_norm(obs[OBS_STATE_KEY].float())
        b = state.shape[0]
        x = torch.randn(b, self.horizon, self.action_dim, generator=self._generator).to(state)
        ks = torch.linspace(self.train_timesteps - 1, 0, self.inference_steps).round().long().tolist()
        for i, k in enumerate(ks):
            ab = self.alpha_bars[k]
            ab_prev = self.alpha_bars[ks[i + 1]] if i + 1 < len(ks) else torch.ones_like(ab)
            eps = self.denoise(x, torch.full((b,), k, dtype=torch.long, device=device), state)
            x0 = ((x - torch.sqrt(1 - ab) * eps) / torch.sqrt(ab)).clamp(-1, 1)
            eps = (x - torch.sqrt(ab) * x0) / torch.sqrt(1 - ab)
            x = torch.sqrt(ab_prev) * x0 + torch.sqrt(1 - ab_prev) * eps
        return x.clamp(-1, 1)

"""Retrieval math behind the selection baselines: normalized features, k-NN distances, a small (state,
action) VAE (Behavior Retrieval, Du et al. 2023), vectorized subsequence DTW (STRAP, Memmel et al. 2024)
and the KSG mutual-information estimator (DemInf, Hejna et al. 2025).

Everything here works on plain arrays, so each piece can be checked against a brute-force version.
Shapes: N prior steps, M target steps, D feature dims, E prior trajectories, T their (padded) length,
Q query sub-trajectories of length L.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from datamil.data.store import ACTION, TrajectoryStore, obs_array_name
from datamil.errors import DatamilError

STATE = obs_array_name("state")
FEATURE_KINDS = ("state", "action", "state_action")


def raw_features(store: TrajectoryStore, kind: str, state_dims: Sequence[int] | None = None) -> np.ndarray:
    """(N, D) float64 features of every step: the state vector, the action, or both side by side."""
    if kind not in FEATURE_KINDS:
        raise DatamilError(f"unknown feature kind {kind!r}; use one of {', '.join(FEATURE_KINDS)}")
    parts = []
    if kind in ("state", "state_action"):
        if STATE not in store.arrays:
            raise DatamilError(f"the data has no {STATE!r}; state-based retrieval needs a state vector")
        state = np.asarray(store.arrays[STATE], np.float64)
        parts.append(state if state_dims is None else state[:, list(state_dims)])
    if kind in ("action", "state_action"):
        parts.append(np.asarray(store.arrays[ACTION], np.float64))
    return np.concatenate(parts, axis=1)


@dataclass(frozen=True)
class Featurizer:
    """Per-dimension standardization fitted on prior and target together, so that both sets live on the
    same scale and no single dimension (e.g. a large joint range) dominates the distances."""

    kind: str
    mean: np.ndarray
    scale: np.ndarray
    state_dims: tuple[int, ...] | None = None

    @classmethod
    def fit(
        cls, stores: Sequence[TrajectoryStore], kind: str, state_dims: Sequence[int] | None = None
    ) -> Featurizer:
        dims = None if state_dims is None else tuple(int(d) for d in state_dims)
        x = np.concatenate([raw_features(s, kind, dims) for s in stores if s.n_steps > 0])
        std = x.std(0)
        return cls(kind, x.mean(0), np.where(std > 1e-8, std, 1.0), dims)

    def __call__(self, store: TrajectoryStore) -> np.ndarray:
        """(N, D) standardized features of `store`."""
        return (raw_features(store, self.kind, self.state_dims) - self.mean) / self.scale


def knn_distance(query: np.ndarray, keys: np.ndarray, k: int) -> np.ndarray:
    """(N,) mean Euclidean distance of each query row to its k nearest rows of `keys` (exact, brute force)."""
    from sklearn.neighbors import NearestNeighbors

    if len(keys) == 0:
        raise DatamilError("no target samples to compare against; give at least one target demo")
    k = max(1, min(int(k), len(keys)))
    index = NearestNeighbors(n_neighbors=k, algorithm="brute").fit(keys)
    distances, _ = index.kneighbors(query)
    return distances.mean(axis=1)


# ------------------------------------------------------------------------------------ Behavior Retrieval
@dataclass
class VAEConfig:
    """A small VAE on standardized (state, action) pairs; its mean embedding is the retrieval space."""

    latent_dim: int = 16
    hidden: int = 128
    beta: float = 0.01  # KL weight; small keeps the embedding informative
    steps: int = 1500
    batch_size: int = 512
    lr: float = 1e-3


class PairVAE(nn.Module):
    """x -> (mu, log_var) -> z -> x_hat, with GELU MLPs of two hidden layers."""

    def __init__(self, dim: int, cfg: VAEConfig) -> None:
        super().__init__()
        h, z = cfg.hidden, cfg.latent_dim
        self.encoder = nn.Sequential(
            nn.Linear(dim, h), nn.GELU(), nn.Linear(h, h), nn.GELU(), nn.Linear(h, 2 * z)
        )
        self.decoder = nn.Sequential(
            nn.Linear(z, h), nn.GELU(), nn.Linear(h, h), nn.GELU(), nn.Linear(h, dim)
        )

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, log_var = self.encoder(x).chunk(2, dim=-1)
        return mu, log_var.clamp(-10.0, 10.0)

    def loss(self, x: torch.Tensor, noise: torch.Tensor, beta: float) -> torch.Tensor:
        """Negative ELBO per batch: squared reconstruction error + beta * KL(q(z|x) || N(0, I))."""
        mu, log_var = self.encode(x)
        z = mu + noise * torch.exp(0.5 * log_var)
        recon = ((self.decoder(z) - x) ** 2).sum(-1)
        kl = 0.5 * (mu**2 + log_var.exp() - 1.0 - log_var).sum(-1)
        return (recon + beta * kl).mean()


def train_vae(x: np.ndarray, cfg: VAEConfig, seed: int) -> PairVAE:
    """Fit the VAE on (N, D) rows; a pure function of (x, cfg, seed): init, batches and noise are seeded
    from private generators, and the global torch RNG is left as it was."""
    data = torch.as_tensor(x, dtype=torch.float32)
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vae = PairVAE(data.shape[1], cfg)
    optimizer = torch.optim.Adam(vae.parameters(), lr=cfg.lr)
    batch = min(cfg.batch_size, len(data))
    for _ in range(cfg.steps):
        rows = torch.randint(0, len(data), (batch,), generator=generator)
        noise = torch.randn(batch, cfg.latent_dim, generator=generator)
        loss = vae.loss(data[rows], noise, cfg.beta)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return vae.eval()


@torch.no_grad()
def embed(vae: PairVAE, x: np.ndarray, chunk: int = 65536) -> np.ndarray:
    """(N, latent_dim) posterior means."""
    data = torch.as_tensor(x, dtype=torch.float32)
    return torch.cat([vae.encode(data[i : i + chunk])[0] for i in range(0, len(data), chunk)]).numpy()


def cosine_similarity_to_set(
    query: np.ndarray, keys: np.ndarray, reduce: str = "max", chunk: int = 8192
) -> np.ndarray:
    """(N,) similarity of each query row to the key set: max (nearest key) or mean cosine similarity."""
    if reduce not in ("max", "mean"):
        raise DatamilError(f"unknown similarity reduction {reduce!r}; use max or mean")
    q = query / np.maximum(np.linalg.norm(query, axis=1, keepdims=True), 1e-12)
    k = keys / np.maximum(np.linalg.norm(keys, axis=1, keepdims=True), 1e-12)
    out = np.empty(len(q))
    for i in range(0, len(q), chunk):
        sim = q[i : i + chunk] @ k.T
        out[i : i + chunk] = sim.max(1) if reduce == "max" else sim.mean(1)
    return out


# ------------------------------------------------------------------------------------ STRAP: subsequence DTW
def sub_trajectories(x: np.ndarray, offsets: np.ndarray, length: int, stride: int) -> np.ndarray:
    """(Q, L, D) windows of `length` steps every `stride` steps of each episode (the last one aligned to
    the episode's end so no step is dropped); an episode shorter than `length` gives one window of its
    first step repeated before it (edge padding), so every query has the same length."""
    windows = []
    for lo, hi in zip(offsets[:-1], offsets[1:], strict=True):
        episode = x[lo:hi]
        if len(episode) < length:
            episode = np.concatenate([np.repeat(episode[:1], length - len(episode), 0), episode])
        starts = list(range(0, len(episode) - length + 1, stride))
        if starts[-1] != len(episode) - length:
            starts.append(len(episode) - length)
        windows += [episode[s : s + length] for s in starts]
    return np.stack(windows)


def pad_episodes(x: np.ndarray, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(E, T_max, D) zero-padded episodes and (E,) their lengths."""
    lengths = np.diff(offsets)
    out = np.zeros((len(lengths), int(lengths.max()), x.shape[1]), x.dtype)
    for e, (lo, hi) in enumerate(zip(offsets[:-1], offsets[1:], strict=True)):
        out[e, : hi - lo] = x[lo:hi]
    return out, lengths


def _pairwise_rows(q: np.ndarray, refs: np.ndarray, ref_sq: np.ndarray) -> np.ndarray:
    """(Q, E, T) Euclidean distances between query steps q (Q, D) and every reference step."""
    cross = (q @ refs.reshape(-1, refs.shape[-1]).T).reshape(len(q), *refs.shape[:2])  # one BLAS matmul
    sq = (q**2).sum(-1)[:, None, None] + ref_sq[None] - 2.0 * cross
    return np.sqrt(np.maximum(sq, 0.0))


def subsequence_dtw(queries: np.ndarray, refs: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """(Q, E) cost of the best alignment of each whole query (Q, L, D) to any contiguous part of each
    reference (E, T, D) with `lengths` (E,): free start and end in the reference, steps (1,1), (1,0), (0,1).

    D[0, j] = C[0, j];  D[i, j] = C[i, j] + min(D[i-1, j-1], D[i-1, j], D[i, j-1]);  cost = min_j D[L-1, j].
    Along a row the horizontal move makes D a min-plus prefix scan: with A[j] = C[i, j] + min(D[i-1, j-1],
    D[i-1, j]) and S the running sum of C[i, :], D[i, j] = S[j] + min_{k<=j} (A[k] - S[k]). So each row is
    one cumsum and one running minimum, vectorized over all queries and references; only the L rows loop.
    Padding sits after each reference's end, so it never reaches a valid cell and is masked at the end.
    """
    ref_sq = (refs**2).sum(-1)
    prev = _pairwise_rows(queries[:, 0], refs, ref_sq)
    for i in range(1, queries.shape[1]):
        cost = _pairwise_rows(queries[:, i], refs, ref_sq)
        diagonal = np.concatenate([np.full(prev.shape[:-1] + (1,), np.inf), prev[..., :-1]], axis=-1)
        a = cost + np.minimum(diagonal, prev)
        running = np.cumsum(cost, axis=-1)
        prev = running + np.minimum.accumulate(a - running, axis=-1)
    valid = np.arange(refs.shape[1])[None, :] < np.asarray(lengths)[:, None]
    return np.where(valid[None], prev, np.inf).min(-1)


def dtw_costs(
    queries: np.ndarray, x: np.ndarray, offsets: np.ndarray, max_cells: int = 4_000_000
) -> np.ndarray:
    """(Q, E) `subsequence_dtw` costs of the queries against every episode of the flat (N, D) array `x`
    with `offsets` (E + 1,). Episodes are padded and matched in chunks, so that one row of cells,
    Q x E_chunk x T_max, stays under `max_cells`: memory stays bounded at any prior size."""
    offsets = np.asarray(offsets)
    t_max = int(np.diff(offsets).max())
    per_chunk = max(1, max_cells // max(1, len(queries) * t_max))
    parts = []
    for e in range(0, len(offsets) - 1, per_chunk):
        chunk = offsets[e : e + per_chunk + 1]
        refs, lengths = pad_episodes(x[chunk[0] : chunk[-1]], chunk - chunk[0])
        parts.append(subsequence_dtw(queries, refs, lengths))
    return np.concatenate(parts, axis=1)


# ------------------------------------------------------------------------------------ DemInf: KSG mutual information
def spread_steps(offsets: np.ndarray, per_episode: int | None) -> np.ndarray:
    """(n,) step indices: up to `per_episode` evenly spaced steps of every episode (all of an episode's steps
    when it is shorter, or when `per_episode` is None or 0). Evenly spaced rather than random, so the sample
    covers each episode from start to end and depends on nothing but the data."""
    parts = []
    for lo, hi in zip(offsets[:-1], offsets[1:], strict=True):
        n = int(hi - lo)
        m = n if not per_episode else min(n, int(per_episode))
        parts.append(lo + np.unique(np.round(np.linspace(0, n - 1, m)).astype(np.int64)))
    return np.concatenate(parts)


def ksg_contributions(x: np.ndarray, y: np.ndarray, k: int = 5) -> np.ndarray:
    """(N,) each sample's term of the KSG estimate of I(X; Y) (Kraskov et al. 2004, estimator 1):

        I(X; Y) ~ psi(k) + psi(N) - < psi(n_x(i) + 1) + psi(n_y(i) + 1) >_i,

    with eps_i the max-norm distance from (x_i, y_i) to its k-th nearest other sample in the joint space, and
    n_x(i), n_y(i) the numbers of other samples strictly closer than eps_i in the x space and the y space
    alone. The mean of the returned terms is the estimate. A sample whose y follows from its x has its joint
    neighbours among its x neighbours (small counts, large term); a y unrelated to x has distant joint
    neighbours and so many marginal ones (small or negative term).
    x: (N, D_x), y: (N, D_y).
    """
    from scipy.special import digamma
    from sklearn.neighbors import KDTree, NearestNeighbors

    x, y = (np.asarray(a, np.float64).reshape(len(a), -1) for a in (x, y))
    n = len(x)
    if n <= k or len(y) != n:
        raise DatamilError(f"KSG needs two arrays of the same length above k={k}; got {n} and {len(y)} rows")
    joint = np.concatenate([x, y], axis=1)
    index = NearestNeighbors(n_neighbors=k + 1, metric="chebyshev").fit(joint)  # +1: each sample finds itself
    radius = np.nextafter(index.kneighbors(joint)[0][:, -1], 0.0)  # strictly inside eps_i
    counts = [KDTree(v, metric="chebyshev").query_radius(v, radius, count_only=True) - 1 for v in (x, y)]
    return digamma(k) + digamma(n) - digamma(counts[0] + 1) - digamma(counts[1] + 1)

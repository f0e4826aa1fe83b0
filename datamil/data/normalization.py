"""Per-dataset normalization statistics, so differently scaled datasets (OXE robots, sims) can be mixed."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

_EPS = 1e-6


@dataclass(frozen=True)
class NormStats:
    """Statistics of one (N, D) array over its first axis. Each field has shape (D,)."""

    mean: np.ndarray
    std: np.ndarray
    min: np.ndarray
    max: np.ndarray
    q01: np.ndarray
    q99: np.ndarray
    count: int

    @classmethod
    def of(cls, values: np.ndarray, max_rows_for_quantiles: int = 200_000, seed: int = 0) -> NormStats:
        """Exact moments and extremes; quantiles on a seeded subsample when the array is huge."""
        x = np.asarray(values, dtype=np.float64).reshape(len(values), -1)
        if len(x) == 0:
            raise ValueError("cannot compute normalization statistics of an empty array")
        sample = x
        if len(x) > max_rows_for_quantiles:
            rows = np.random.default_rng(seed).choice(len(x), max_rows_for_quantiles, replace=False)
            sample = x[np.sort(rows)]
        q01, q99 = np.quantile(sample, [0.01, 0.99], axis=0)
        return cls(x.mean(0), x.std(0), x.min(0), x.max(0), q01, q99, len(x))

    def normalize(self, x: np.ndarray, mode: str = "gaussian") -> np.ndarray:
        """gaussian: (x - mean) / std; bounds: map [q01, q99] to [-1, 1] and clip (robust to outliers)."""
        if mode == "gaussian":
            return (x - self.mean) / (self.std + _EPS)
        if mode == "bounds":
            scaled = 2 * (x - self.q01) / (self.q99 - self.q01 + _EPS) - 1
            return np.clip(scaled, -1, 1)
        raise ValueError(f"unknown normalization mode {mode!r}; use 'gaussian' or 'bounds'")

    def unnormalize(self, y: np.ndarray, mode: str = "gaussian") -> np.ndarray:
        if mode == "gaussian":
            return y * (self.std + _EPS) + self.mean
        if mode == "bounds":
            return (y + 1) / 2 * (self.q99 - self.q01 + _EPS) + self.q01
        raise ValueError(f"unknown normalization mode {mode!r}; use 'gaussian' or 'bounds'")

    def to_dict(self) -> dict:
        return {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> NormStats:
        return cls(**{k: (np.asarray(v, np.float64) if k != "count" else int(v)) for k, v in d.items()})

"""Per-dataset normalization statistics, so differently scaled datasets (OXE robots, sims) can be mixed."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from datamil.errors import DataError

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

    @classmethod
    def streamed(
        cls,
        n_rows: int,
        read: Callable[[np.ndarray], np.ndarray],
        chunk_rows: int = 1 << 14,
        max_rows_for_quantiles: int = 200_000,
        seed: int = 0,
    ) -> NormStats:
        """`of` over `n_rows` rows that `read(positions)` returns a chunk at a time, bit for bit.

        Why: a store's arrays can be larger than memory (a 50k-episode ingest); this holds one chunk plus
        the quantile subsample in its own dtype, taking quantiles one column at a time. numpy reduces a
        (N, D) array over axis 0 row after row, so accumulating chunk after chunk in that order gives the
        same sums; a one-column array (D = 1), which numpy sums pairwise, is read whole (8 bytes a row).
        """
        if n_rows <= chunk_rows or _width(read) == 1:
            return cls.of(read(np.arange(n_rows)), max_rows_for_quantiles, seed)

        def chunks() -> Iterator[np.ndarray]:
            for lo in range(0, n_rows, chunk_rows):
                rows = read(np.arange(lo, min(lo + chunk_rows, n_rows)))
                yield np.asarray(rows, dtype=np.float64).reshape(len(rows), -1)

        total = low = high = None
        for x in chunks():
            total = x.sum(0) if total is None else np.concatenate([total[None], x]).sum(0)
            low = x.min(0) if low is None else np.minimum(low, x.min(0))
            high = x.max(0) if high is None else np.maximum(high, x.max(0))
        mean = total / n_rows
        squares = None
        for x in chunks():
            d = np.square(x - mean)
            squares = d.sum(0) if squares is None else np.concatenate([squares[None], d]).sum(0)
        sample = np.arange(n_rows)
        if n_rows > max_rows_for_quantiles:
            rng = np.random.default_rng(seed)
            sample = np.sort(rng.choice(n_rows, max_rows_for_quantiles, replace=False))
        picked = [read(sample[lo : lo + chunk_rows]) for lo in range(0, len(sample), chunk_rows)]
        rows = np.concatenate(picked).reshape(len(sample), -1)
        del picked
        columns = [np.quantile(rows[:, j].astype(np.float64), [0.01, 0.99]) for j in range(rows.shape[1])]
        q01, q99 = np.stack(columns, axis=1)
        return cls(mean, np.sqrt(squares / n_rows), low, high, q01, q99, n_rows)

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


def _width(read: Callable[[np.ndarray], np.ndarray]) -> int:
    """Values per row of what `read` returns (from its first row)."""
    first = np.asarray(read(np.arange(1)))
    return int(first.size)


# ---------------------------------------------------------------- the data pipeline's normalization
# Datasets in a mixture act in their own units (OXE end-effector deltas in metres, joint velocities,
# MetaWorld's [-1, 1] box), so a policy trained on raw actions sees one dimension dominate its loss and the
# datamodel surrogate with it. Each dataset's actions (and states) are therefore mapped by that dataset's
# own statistics into one normalized space before training and scoring, and a policy's outputs are mapped
# back by the target's statistics when it acts. MetaWorld data already lives in [-1, 1]: its configs use
# `none`, which leaves every array untouched (bit-identical results).
NORMALIZATION_MODES = ("none", "q01_q99", "mean_std")
NORMALIZED_KEYS = ("action", "obs/state")  # store arrays the pipeline normalizes (when present)


def check_mode(mode: str) -> str:
    """`mode`, or a one-line error naming the valid modes."""
    if mode not in NORMALIZATION_MODES:
        raise DataError(
            f"unknown normalization {mode!r}; set data.normalization to one of {list(NORMALIZATION_MODES)}"
        )
    return mode


def _spread(low: np.ndarray, high: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(span, varies): a dimension whose statistics have no spread (a constant, e.g. a padded rotation) is
    not scaled; it maps to 0, so a constant dimension of one dataset does not read as an extreme of another."""
    span = np.asarray(high, np.float64) - np.asarray(low, np.float64)
    varies = span > _EPS
    return np.where(varies, span, 1.0), varies


def normalize_array(x: np.ndarray, stats: NormStats, mode: str) -> np.ndarray:
    """(N, D) raw values -> normalized float32.

    q01_q99: [q01, q99] -> [-1, 1], clipped there (the outer 2% are outliers, and every policy head
    squashes to [-1, 1]). mean_std: (x - mean) / std, unbounded. none: unchanged (the same array).
    """
    if check_mode(mode) == "none":
        return x
    x = np.asarray(x, np.float64)
    if mode == "q01_q99":
        span, varies = _spread(stats.q01, stats.q99)
        y = np.where(varies, np.clip(2 * (x - stats.q01) / span - 1, -1, 1), 0.0)
    else:
        std, varies = _spread(np.zeros_like(stats.std), stats.std)
        y = np.where(varies, (x - stats.mean) / std, 0.0)
    return y.astype(np.float32)


def unnormalize_array(y: np.ndarray, stats: NormStats, mode: str) -> np.ndarray:
    """Inverse of `normalize_array` (up to the clipping): normalized values -> raw units, float32."""
    if check_mode(mode) == "none":
        return y
    y = np.asarray(y, np.float64)
    if mode == "q01_q99":
        span, varies = _spread(stats.q01, stats.q99)
        x = np.where(varies, (y + 1) / 2 * span + stats.q01, stats.q01)
    else:
        std, varies = _spread(np.zeros_like(stats.std), stats.std)
        x = np.where(varies, y * std + stats.mean, stats.mean)
    return x.astype(np.float32)


@dataclass(frozen=True)
class ActingNormalization:
    """What a trained policy needs to act in the target's raw units: the target's statistics and the mode.

    Saved in the policy checkpoint; `observations` normalizes the raw state the robot or simulator reports
    and `actions` maps the policy's normalized output back to raw units.
    """

    mode: str
    action: NormStats
    state: NormStats | None = None

    def observations(self, obs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Raw observations {"state": (B, D), "image_*": ...} -> the ones the policy was trained on."""
        if self.state is None or "state" not in obs:
            return obs
        return {**obs, "state": normalize_array(np.asarray(obs["state"]), self.state, self.mode)}

    def actions(self, actions: np.ndarray) -> np.ndarray:
        """(B, A) or (B, H, A) normalized actions -> raw units."""
        return unnormalize_array(np.asarray(actions), self.action, self.mode)

    def to_dict(self) -> dict:
        state = None if self.state is None else self.state.to_dict()
        return {"mode": self.mode, "action": self.action.to_dict(), "state": state}

    @classmethod
    def from_dict(cls, d: dict) -> ActingNormalization:
        state = None if d.get("state") is None else NormStats.from_dict(d["state"])
        return cls(check_mode(d["mode"]), NormStats.from_dict(d["action"]), state)


def group_stats(store: Any, groups: Sequence[str] | None = None) -> dict[str, dict[str, NormStats]]:
    """{group: {array name: NormStats}} of the normalized arrays, over each group's steps.

    groups: one label per episode (a mixture prior's source dataset); None = the whole store is one group,
    labelled "" (a single prior, or the target).
    """
    return store.stats_by([""] * store.n_episodes if groups is None else groups, NORMALIZED_KEYS)


def normalize_store(
    store: Any, mode: str, stats: dict[str, dict[str, NormStats]], groups: Sequence[str] | None = None
) -> Any:
    """A store whose actions (and states) are normalized group by group with `stats` (see group_stats).

    Images and every other array are shared with `store`, not copied; `mode="none"` returns `store` itself.
    """
    if check_mode(mode) == "none":
        return store
    labels = np.asarray([""] * store.n_episodes if groups is None else list(groups))
    arrays = dict(store.arrays)
    for key in NORMALIZED_KEYS:
        if key not in arrays:
            continue
        out = np.empty(arrays[key].shape, np.float32)
        for label in sorted(set(labels.tolist())):
            per_key = stats[label]
            steps = store.step_indices(np.flatnonzero(labels == label))
            out[steps] = normalize_array(np.asarray(arrays[key][steps]), per_key[key], mode)
        arrays[key] = out
    return type(store)(arrays, store.offsets, store.episodes)

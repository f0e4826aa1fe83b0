"""The selection artifact: one JSON file a person can open, written atomically.

It records the selected episode ids, every episode's score, and what produced them (method, budget,
resolved config, seed, package versions), so a co-training run can be traced back and reproduced.
"""

from __future__ import annotations

import json
import platform
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from datamil.errors import DatamilError
from datamil.io import atomic_write_json

FORMAT = "datamil-selection"
VERSION = 1
_PACKAGES = ("datamil", "torch", "numpy", "scikit-learn", "scipy")


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


@dataclass
class Selection:
    """selected: episode ids in store order; scores: every episode id -> its trajectory score."""

    selected: list[str]
    scores: dict[str, float]
    method: str
    budget: float | None
    seed: int
    config: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=package_versions)

    @classmethod
    def from_arrays(
        cls,
        episode_ids: list[str],
        traj_scores: np.ndarray,
        selected_idx: np.ndarray,
        method: str,
        budget: float | None,
        seed: int,
        config: dict[str, Any] | None = None,
    ) -> Selection:
        scores = {e: float(s) for e, s in zip(episode_ids, np.asarray(traj_scores, np.float64), strict=True)}
        return cls(
            [episode_ids[i] for i in np.sort(selected_idx)], scores, method, budget, seed, dict(config or {})
        )


def write_selection(path: str | Path, selection: Selection) -> Path:
    """Write atomically; NaN scores are refused (they would not round-trip as JSON numbers)."""
    if not all(np.isfinite(list(selection.scores.values()))):
        raise DatamilError("refusing to write a selection with NaN/inf scores; re-run the estimator")
    missing = set(selection.selected) - set(selection.scores)
    if missing:
        raise DatamilError(f"{len(missing)} selected ids have no score (first: {sorted(missing)[0]!r})")
    return atomic_write_json(path, {"format": FORMAT, "version": VERSION, **asdict(selection)})


def read_selection(path: str | Path) -> Selection:
    """Load a selection file; a file of another format or version fails on one line."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise DatamilError(f"cannot read selection {path}: {err}") from err
    if raw.pop("format", None) != FORMAT or raw.pop("version", None) != VERSION:
        raise DatamilError(f"{path} is not a datamil selection v{VERSION}; re-run `python -m datamil.select`")
    return Selection(**raw)

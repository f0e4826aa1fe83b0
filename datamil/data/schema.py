"""The one episode schema every data source converts into, and its validation.

Shapes: T steps, A action dims, D_state state dims, images (T, H, W, C) uint8.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from datamil.errors import DataError

# Observation keys. A state vector is optional (many OXE datasets have none in a shared frame);
# images are any key that starts with IMAGE_PREFIX, e.g. "image_primary", "image_wrist".
OBS_STATE = "state"
IMAGE_PREFIX = "image"
STEP_FLAGS = ("is_first", "is_last", "is_terminal")


def is_image_key(key: str) -> bool:
    return key.startswith(IMAGE_PREFIX)


@dataclass(frozen=True)
class EpisodeMeta:
    """Where an episode came from. `episode_id` is stable across re-reads: selections refer to it."""

    episode_id: str
    dataset: str
    task: str = ""
    success: bool | None = None  # None when the source does not say


@dataclass
class Episode:
    """One trajectory. observations: key -> (T, ...); actions: (T, A); rewards and flags: (T,)."""

    observations: dict[str, np.ndarray]
    actions: np.ndarray
    meta: EpisodeMeta
    rewards: np.ndarray | None = None
    is_first: np.ndarray | None = None
    is_last: np.ndarray | None = None
    is_terminal: np.ndarray | None = None
    language_instruction: str = ""
    extras: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        """Fill the RLDS step flags the usual way when a source does not give them."""
        n = len(self.actions)
        if self.rewards is None:
            self.rewards = np.zeros(n, np.float32)
        if self.is_first is None:
            self.is_first = np.arange(n) == 0
        if self.is_last is None:
            self.is_last = np.arange(n) == n - 1
        if self.is_terminal is None:
            self.is_terminal = np.zeros(n, bool)

    def __len__(self) -> int:
        return len(self.actions)

    def validate(self, action_dim: int | None = None) -> Episode:
        """Raise DataError (one line, with the fix) unless the episode is usable; returns self."""
        where = f"episode {self.meta.episode_id!r} of {self.meta.dataset!r}"
        actions = np.asarray(self.actions)
        if actions.ndim != 2 or len(actions) == 0:
            raise DataError(f"{where}: actions must have shape (T, A) with T > 0, got {actions.shape}")
        if action_dim is not None and actions.shape[1] != action_dim:
            raise DataError(
                f"{where}: action dimension {actions.shape[1]} does not match the dataset's {action_dim}; "
                "standardize it to the dataset's action space or keep it in a separate dataset"
            )
        if not np.all(np.isfinite(actions)):
            bad = int(np.argmax(~np.isfinite(actions).all(axis=1)))
            raise DataError(f"{where}: action at step {bad} is NaN or inf; drop or repair the episode")
        if not self.observations:
            raise DataError(f"{where}: has no observations; expected at least {OBS_STATE!r} or an image key")
        for key, value in self.observations.items():
            if len(value) != len(actions):
                raise DataError(
                    f"{where}: observation {key!r} has {len(value)} steps but actions have {len(actions)}"
                )
            if not is_image_key(key) and not np.all(np.isfinite(value)):
                raise DataError(f"{where}: observation {key!r} contains NaN or inf; repair the episode")
        for name in ("rewards", *STEP_FLAGS):
            if len(getattr(self, name)) != len(actions):
                raise DataError(
                    f"{where}: {name} has {len(getattr(self, name))} steps, expected {len(actions)}"
                )
        return self

"""The one place that writes metrics: computation returns numbers, a Logger records them.

wandb runs offline by default and never prompts for a login; its files live inside the run directory so a
run directory is self-contained (`wandb sync <run_dir>/wandb/offline-run-*` uploads it later).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from datamil.errors import DatamilError

WANDB_MODES = ("offline", "online", "disabled")


@runtime_checkable
class Logger(Protocol):
    """Anything with log(metrics, step) and close()."""

    def log(self, metrics: dict[str, float], step: int) -> None: ...

    def close(self) -> None: ...


class NullLogger:
    """Drops everything: for tests, estimators' inner runs and library calls without a run directory."""

    def log(self, metrics: dict[str, float], step: int) -> None:
        pass

    def close(self) -> None:
        pass


class MemoryLogger:
    """Keeps every (step, metrics) pair in a list: for notebooks, tests and report building."""

    def __init__(self) -> None:
        self.records: list[tuple[int, dict[str, float]]] = []

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.records.append((int(step), dict(metrics)))

    def close(self) -> None:
        pass


class WandbLogger:
    """wandb in "offline" (default), "online" or "disabled" mode, writing under `run_dir/wandb`."""

    def __init__(
        self,
        run_dir: str | Path,
        config: dict[str, Any] | None = None,
        mode: str = "offline",
        project: str = "datamil",
        name: str | None = None,
    ) -> None:
        if mode not in WANDB_MODES:
            raise DatamilError(f"unknown wandb mode {mode!r}; use one of {', '.join(WANDB_MODES)}")
        os.environ.setdefault("WANDB_SILENT", "true")
        os.environ["WANDB_MODE"] = mode  # explicit: an offline run must never reach for a login
        import wandb

        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        self.mode = mode
        self._run = wandb.init(
            project=project,
            name=name,
            dir=str(run_dir),
            config=config or {},
            mode=mode,
            reinit="create_new",
            settings=wandb.Settings(silent=True, console="off"),
        )

    @property
    def run_dir(self) -> Path | None:
        """Where wandb wrote this run's files (None when disabled)."""
        if self.mode == "disabled":
            return None
        return Path(self._run.dir).parent

    def log(self, metrics: dict[str, float], step: int) -> None:
        self._run.log(dict(metrics), step=int(step))

    def close(self) -> None:
        self._run.finish()


def make_logger(mode: str, run_dir: str | Path | None = None, config: dict[str, Any] | None = None) -> Logger:
    """ "none" → NullLogger; "offline" / "online" / "disabled" → WandbLogger under run_dir."""
    if mode in ("none", "null", None):
        return NullLogger()
    if run_dir is None:
        raise DatamilError(
            f"logger mode {mode!r} needs a run_dir for wandb's files; pass one or use mode='none'"
        )
    return WandbLogger(run_dir, config, mode=mode)

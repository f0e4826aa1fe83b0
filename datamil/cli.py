"""What every Hydra entry point shares: one-line errors, the resolved config saved next to the artifacts."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from datamil.errors import DatamilError
from datamil.io import atomic_write_text

os.environ.setdefault("WANDB_SILENT", "true")
CONFIG_DIR = str(Path(__file__).resolve().parent.parent / "configs")


def one_line_errors(main: Callable[[DictConfig], Any]) -> Callable[[DictConfig], Any]:
    """Print a DatamilError as one line on stderr and exit 2, instead of a traceback."""

    @functools.wraps(main)
    def wrapped(cfg: DictConfig) -> Any:
        try:
            return main(cfg)
        except DatamilError as error:
            print(f"error: {error}", file=sys.stderr)
            sys.exit(2)

    return wrapped


def require_task(cfg: DictConfig, example: str) -> str:
    task = cfg.get("task")
    if not task:
        raise DatamilError(
            f"no task given; add +task=<name>, e.g. `{example} +task=metaworld/pick-place-wall`"
        )
    return str(task)


def save_config(cfg: DictConfig, run_dir: Path) -> dict:
    """Write the fully resolved config as run_dir/config.yaml and return it as a plain dict."""
    resolved = OmegaConf.to_container(cfg, resolve=True)
    atomic_write_text(run_dir / "config.yaml", OmegaConf.to_yaml(OmegaConf.create(resolved)))
    return resolved  # type: ignore[return-value]


def run_dir_of() -> Path:
    from hydra.core.hydra_config import HydraConfig

    return Path(HydraConfig.get().runtime.output_dir)

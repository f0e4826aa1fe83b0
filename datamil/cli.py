"""What every Hydra entry point shares: one-line errors, the resolved config saved next to the artifacts."""

from __future__ import annotations

import functools
import os
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import get_class
from omegaconf import DictConfig, MissingMandatoryValue, OmegaConf

from datamil.errors import DatamilError
from datamil.io import atomic_write_text

os.environ.setdefault("WANDB_SILENT", "true")
# datamil/configs/hydra/launcher/ray.yaml has the name of hydra-ray-launcher's own config and spells out all of it;
# Hydra 1.3 still validates it against that schema and warns about the name on every sweep.
warnings.filterwarnings("ignore", message=r"\s*'hydra/launcher/ray' is validated against ConfigStore schema")
# The Hydra configs ship inside the package (package data), so an editable checkout and an installed wheel
# find them the same way.
CONFIG_DIR = str(Path(__file__).resolve().parent / "configs")


def one_line_errors(main: Callable[[DictConfig], Any]) -> Callable[[DictConfig], Any]:
    """Print a user error as one line on stderr and exit 2, instead of a traceback.

    User errors: a DatamilError, a config value left at `???`, and either of them raised in a constructor
    that Hydra's `instantiate` wrapped.
    """

    @functools.wraps(main)
    def wrapped(cfg: DictConfig) -> Any:
        try:
            return main(cfg)
        except Exception as error:
            message = user_message(error)
            if message is None:
                raise
            print(f"error: {message}", file=sys.stderr)
            sys.exit(2)

    return wrapped


def user_message(error: BaseException) -> str | None:
    """The one-line message of a user error (see one_line_errors); None for a bug, which keeps its traceback."""
    if isinstance(error, InstantiationException) and error.__cause__ is not None:
        error = error.__cause__
    if isinstance(error, MissingMandatoryValue):
        return f"{error.full_key} is not set; add {error.full_key}=<value> to the command line"
    return str(error) if isinstance(error, DatamilError) else None


def require_values(cfg: DictConfig) -> None:
    """Refuse a config with values left at `???` before anything runs or is written.

    The message names the missing keys and, when the group's class has a `usage` line (a data source's
    required settings), says how to set them.
    """
    missing = sorted(OmegaConf.missing_keys(cfg))
    if not missing:
        return
    usage = _usage(cfg.get(missing[0].split(".")[0]))
    how = usage or "add " + " ".join(f"{key}=<value>" for key in missing) + " to the command line"
    raise DatamilError(f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not set: {how}")


def _usage(group: Any) -> str | None:
    """The `usage` line of the class a config group instantiates (its `_target_`), if it has one."""
    if not isinstance(group, DictConfig) or "_target_" not in group:
        return None
    return getattr(get_class(str(group["_target_"])), "usage", None)


def require_task(cfg: DictConfig, example: str) -> str:
    task = cfg.get("task")
    if not task:
        raise DatamilError(
            f"no task given; add +task=<name>, e.g. `{example} +task=metaworld/pick-place-wall`"
        )
    return str(task)


def save_config(cfg: DictConfig, run_dir: Path) -> dict:
    """Write the fully resolved config as run_dir/config.yaml and return it as a plain dict.

    Also makes the app's `hydra.searchpath` config directories known to the plug-in registries."""
    from datamil.registry import use_hydra_searchpath

    use_hydra_searchpath()
    resolved = OmegaConf.to_container(cfg, resolve=True)
    atomic_write_text(run_dir / "config.yaml", OmegaConf.to_yaml(OmegaConf.create(resolved)))
    return resolved  # type: ignore[return-value]


def run_dir_of() -> Path:
    from hydra.core.hydra_config import HydraConfig

    return Path(HydraConfig.get().runtime.output_dir)

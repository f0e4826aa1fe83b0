"""The repository's scripts (benchmarks/*.py) as modules, for scripts and tests that use each other's parts.

Why: benchmarks/ holds scripts run as `python benchmarks/<name>.py`, not a package, yet the co-training
benchmarks share one plan and one table writer, and the tests call their functions. Each file is loaded
once per process under one name, so there is one copy of its dataclasses (which look their module up when
they are built or pickled), whichever script or test loaded it first.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType


def load_script(path: str | os.PathLike) -> ModuleType:
    """The Python file at `path` as the module `datamil_script_<stem>`, executed on the first call only."""
    path = Path(path).resolve()
    name = f"datamil_script_{path.stem}"
    if name not in sys.modules:
        if not path.is_file():
            raise FileNotFoundError(f"no script {path}; run from a checkout of the datamil repository")
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # before it runs: its dataclasses look their module up
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[name]
            raise
    return sys.modules[name]

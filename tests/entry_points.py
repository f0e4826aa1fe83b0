"""Run an entry point as a user does, `python -m <module> <overrides> hydra.run.dir=<run_dir>`, in a fresh
interpreter: the one way the end-to-end tests start `datamil.select`, `cotrain` and `evaluate`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def user_env(cache: str | Path) -> dict[str, str]:
    """A user's environment against the given datamil cache: no wandb, one thread."""
    return {**os.environ, "DATAMIL_CACHE": str(cache), "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}


def run_app(module: str, *overrides: str, env: dict, run_dir: str | Path) -> subprocess.CompletedProcess:
    """The finished process, whatever its exit code (tests of refusals read its stderr)."""
    command = [sys.executable, "-m", module, *overrides, f"hydra.run.dir={run_dir}"]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)


def run_app_ok(module: str, *overrides: str, env: dict, run_dir: str | Path) -> subprocess.CompletedProcess:
    """`run_app` that must succeed; a failure shows the end of the app's stderr."""
    done = run_app(module, *overrides, env=env, run_dir=run_dir)
    assert done.returncode == 0, done.stderr[-3000:]
    return done

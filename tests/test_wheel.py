"""A built wheel is the whole product: installed without the checkout, it runs the main job from an empty
directory (configs, datamil.sim_tasks and datamil.real_robot ship inside it)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TINY_DATA, TINY_TASK

ROOT = Path(__file__).resolve().parents[1]
# All a wheel is built from; copying them keeps the build's build/ and egg-info out of the checkout.
SOURCES = ("pyproject.toml", "README.md", "datamil")
FAST = ["policy.hidden=[16,16]", "estimator.proxy.optim.total_steps=20", "estimator.proxy.batch_size=32"]


def pip(*args: str, cwd: Path) -> None:
    """Run pip offline (--no-index): the build and the install use only what this environment has."""
    done = subprocess.run(
        [sys.executable, "-m", "pip", *args, "--no-index", "--no-deps", "-q"],
        cwd=cwd, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.fixture(scope="module")
def wheel_site(tmp_path_factory) -> Path:
    """The worktree built into a wheel and installed with --target: a site directory holding only datamil."""
    tmp = tmp_path_factory.mktemp("wheel")
    source = tmp / "source"
    source.mkdir()
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(ROOT / name, source / name)
    pip("wheel", "--no-build-isolation", "-w", str(tmp / "dist"), str(source), cwd=tmp)
    (wheel,) = (tmp / "dist").glob("datamil-*.whl")
    pip("install", "--target", str(tmp / "site"), str(wheel), cwd=tmp)
    return tmp / "site"


@pytest.mark.slow
def test_wheel_runs_the_main_job_from_an_empty_directory(wheel_site, tiny_task_data, cli_env, tmp_path):
    workdir = tmp_path / "empty"
    workdir.mkdir()
    env = {**cli_env, "PYTHONPATH": str(wheel_site)}  # the wheel's copy, not the checkout's, is imported

    where = subprocess.run(
        [sys.executable, "-c", "import datamil, datamil.cli as c, datamil.sim_tasks as s, datamil.real_robot as r;"
         "print(datamil.__file__, c.CONFIG_DIR, s.__file__, r.__file__, sep='\\n')"],
        cwd=workdir, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert where.returncode == 0, where.stderr[-2000:]
    for path in where.stdout.split():
        assert Path(path).resolve().is_relative_to(wheel_site.resolve()), path
    assert (Path(where.stdout.split()[1]) / "select.yaml").is_file()

    command = [sys.executable, "-m", "datamil.select", f"+task={TINY_TASK}", *TINY_DATA, *FAST,
               "selection.budget=0.25", "device=cpu"]  # fmt: skip
    done = subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    # Hydra's default run directory is relative to where the command runs: outputs/select/<time>/
    (selection_file,) = workdir.glob("outputs/select/*/selection.json")
    selection = json.loads(selection_file.read_text())
    assert len(selection["selected"]) == round(0.25 * tiny_task_data.prior.n_episodes)
    assert set(selection["scores"]) == set(tiny_task_data.prior.episodes.episode_id)

"""Sweep launchers (datamil/configs/hydra/launcher): the Ray launcher end to end on a local Ray that the sweep
starts on this machine and stops, against the basic launcher; the GPU request of the SLURM launcher.

The Ray and SLURM plugins are optional extras (`pip install -e ".[ray]"`, `".[slurm]"`): their tests skip,
saying so, where the plugin is not installed.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from datamil.cli import CONFIG_DIR

CONFIGS = Path(CONFIG_DIR)
RAY_PROCESSES = {"raylet", "gcs_server"}


def has_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


def compose_launcher(launcher: str, *overrides: str):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose("evaluate", [f"hydra/launcher={launcher}", *overrides], return_hydra_config=True)
    return cfg.hydra.launcher


@pytest.mark.filterwarnings(r"ignore:\s*'hydra/launcher/ray' is validated:UserWarning")  # see datamil.cli
def test_ray_launcher_config_is_ours_in_full() -> None:
    """datamil/configs/hydra/launcher/ray.yaml shadows the plugin's config of the same name and names its class."""
    launcher = compose_launcher("ray")
    assert launcher._target_ == "hydra_plugins.hydra_ray_launcher.ray_launcher.RayLauncher"
    assert launcher.ray.init.address is None and launcher.ray.init.include_dashboard is False
    assert launcher.ray.remote.max_calls == 1 and launcher.ray.remote.num_cpus == 1


@pytest.mark.skipif(
    not has_module("hydra_plugins.hydra_submitit_launcher"),
    reason="hydra-submitit-launcher is not installed (pip install -e '.[slurm]')",
)
@pytest.mark.parametrize(
    "overrides, line",
    [
        ([], None),
        (["hydra.launcher.gpus_per_node=1"], "#SBATCH --gpus-per-node=1"),
        (["hydra.launcher.gres=gpu:2"], "#SBATCH --gres=gpu:2"),
    ],
)
def test_slurm_launcher_asks_for_the_gpus_it_is_given(tmp_path, monkeypatch, overrides, line) -> None:
    """The sbatch script submitit writes for our slurm.yaml, parameters passed as the plugin passes them
    (submitit only builds a SLURM executor where `srun` exists: a stand-in that is never run)."""
    import submitit
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
    from omegaconf import OmegaConf

    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "srun").write_text("#!/bin/sh\nexit 1\n")
    (tmp_path / "bin" / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    params = OmegaConf.to_container(compose_launcher("slurm", *overrides), resolve=True)
    executor = submitit.AutoExecutor(cluster="slurm", folder=tmp_path / "jobs")
    generic = set(OmegaConf.structured(BaseQueueConf).keys())
    skip = {"_target_", "submitit_folder", "max_num_timeout"}
    executor.update_parameters(
        **{k if k in generic else f"slurm_{k}": v for k, v in params.items() if k not in skip}
    )
    script = executor._executor._make_submission_file_text("python job.py", "uid")
    gpu_lines = [s for s in script.splitlines() if "gpu" in s or "gres" in s]
    assert gpu_lines == ([] if line is None else [line])


def ray_processes() -> set[int]:
    """pids of this machine's Ray daemons (raylet, gcs_server)."""
    found = set()
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and (entry / "comm").read_text().strip() in RAY_PROCESSES:
                found.add(int(entry.name))
        except OSError:
            continue
    return found


def sweep(launcher: list[str], sweep_dir: Path, checkpoint: Path, env: dict) -> tuple[list[dict], str]:
    """(results.json of the 2-job evaluation sweep seed=0,1 minus its timings, the sweep's log)."""
    command = [
        sys.executable, "-m", "datamil.evaluate", "-m", f"checkpoint={checkpoint}", "seed=0,1",
        "eval.n_episodes=2", "eval.max_steps=10", "eval.n_envs=2", "device=cpu",
        f"hydra.sweep.dir={sweep_dir}", *launcher,
    ]  # fmt: skip
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "ConfigStore schema" not in done.stderr  # ray.yaml's name clash is silenced (datamil.cli)
    results = [json.loads((sweep_dir / str(n) / "results.json").read_text()) for n in (0, 1)]
    kept = [{k: v for k, v in r.items() if k not in ("wall_s", "steps_per_s")} for r in results]
    return kept, done.stdout + done.stderr


@pytest.mark.slow
@pytest.mark.sim
@pytest.mark.skipif(
    not (has_module("ray") and has_module("hydra_plugins.hydra_ray_launcher")),
    reason="ray / hydra-ray-launcher are not installed (pip install -e '.[ray]')",
)
def test_ray_sweep_equals_the_basic_launcher(cli_env, tmp_path) -> None:
    """hydra/launcher=ray on a loopback-only local Ray of 2 CPUs, started by the sweep and gone after it."""
    from datamil.checkpoint import save_policy
    from datamil.policies.mlp import MLPPolicy
    from datamil.training import init_params

    policy = MLPPolicy(obs_dim=39, action_dim=4, hidden=(16, 16))  # MetaWorld's state and action sizes
    checkpoint = save_policy(tmp_path / "policy.pt", policy, init_params(policy, 0), task="metaworld/reach")
    env = {**cli_env, "RAY_USAGE_STATS_ENABLED": "0"}  # no usage report leaves the machine
    env.pop("RAY_ADDRESS", None)  # a Ray of its own, never a cluster named in the environment
    before = ray_processes()
    basic, _ = sweep([], tmp_path / "basic", checkpoint, env)
    ray_dir = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    try:
        on_ray, log = sweep(
            [
                "hydra/launcher=ray",
                "hydra.launcher.ray.init.num_cpus=2",
                "+hydra.launcher.ray.init._node_ip_address=127.0.0.1",
                f"+hydra.launcher.ray.init._temp_dir={ray_dir}",
            ],
            tmp_path / "ray",
            checkpoint,
            env,
        )
    finally:
        shutil.rmtree(ray_dir, ignore_errors=True)
    assert [r["seed"] for r in basic] == [0, 1] and all(r["n_episodes"] == 2 for r in basic)
    assert "Ray Launcher is launching 2 jobs" in log
    assert on_ray == basic
    deadline = time.monotonic() + 30
    while ray_processes() - before and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not ray_processes() - before, "the sweep left Ray daemons running"

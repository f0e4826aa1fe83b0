"""Sweep launchers (datamil/configs/hydra/launcher): the Ray launcher end to end on a local Ray that the sweep
starts on this machine and stops, against the basic launcher; the GPU request of the SLURM launcher.

The Ray plugin is part of the dev extra; the SLURM plugin is an optional extra (`pip install -e ".[slurm]"`).
Their tests skip, saying so, where the plugin is not installed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from local_ray import has_module, local_ray, needs_ray, ray_env

from datamil.cli import CONFIG_DIR


def compose_launcher(launcher: str, *overrides: str):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
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


def sweep(launcher: list[str], sweep_dir: Path, checkpoint: Path, env: dict) -> tuple[list[dict], str]:
    """(results.json of the 2-job evaluation sweep seed=0,1 minus its timings, the sweep's log)."""
    command = [
        sys.executable, "-m", "datamil.evaluate", "-m", f"checkpoint={checkpoint}", "seed=0,1",
        "eval.n_episodes=2", "eval.max_steps=10", "eval.n_envs=2", "device=cpu",
        f"hydra.sweep.dir={sweep_dir}", *launcher,
    ]  # fmt: skip
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "ConfigStore schema" not in done.stderr  # ray.yaml's name clash is silenced (datamil.cli)
    results = [json.loads((sweep_dir / str(n) / "results.json").read_text()) for n in (0, 1)]
    kept = [{k: v for k, v in r.items() if k not in ("wall_s", "steps_per_s")} for r in results]
    return kept, done.stdout + done.stderr


@pytest.mark.slow
@pytest.mark.sim
@needs_ray
def test_ray_sweep_equals_the_basic_launcher(cli_env, tmp_path) -> None:
    """hydra/launcher=ray on a loopback-only local Ray of 2 CPUs, started by the sweep and gone after it."""
    from datamil.checkpoint import save_policy
    from datamil.policies.mlp import MLPPolicy
    from datamil.training import init_params

    policy = MLPPolicy(obs_dim=39, action_dim=4, hidden=(16, 16))  # MetaWorld's state and action sizes
    checkpoint = save_policy(tmp_path / "policy.pt", policy, init_params(policy, 0), task="metaworld/reach")
    env = ray_env(cli_env)
    basic, _ = sweep([], tmp_path / "basic", checkpoint, env)
    with local_ray() as ray:
        on_ray, log = sweep(ray, tmp_path / "ray", checkpoint, env)
    assert [r["seed"] for r in basic] == [0, 1] and all(r["n_episodes"] == 2 for r in basic)
    assert "Ray Launcher is launching 2 jobs" in log
    assert on_ray == basic

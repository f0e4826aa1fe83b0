"""Proxy seeds fanned out over jobs (`score_only=true`, one per seed) and gathered (`gather=true`) give the
selection one process writes, also when the jobs run on a local Ray; a gather refuses missing or foreign
score files with one line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_DATA, TINY_TASK
from entry_points import run_app
from local_ray import local_ray, needs_ray, ray_env
from omegaconf import OmegaConf

from datamil.errors import DatamilError
from datamil.io import atomic_write_npz
from datamil.select import check_fan_out
from datamil.selection.pipeline import check_seed_files, fingerprint, score_path

TINY = [
    f"+task={TINY_TASK}",
    *TINY_DATA,
    "policy.hidden=[16,16]",
    "estimator.proxy.optim.total_steps=20",
    "estimator.proxy.batch_size=32",
    "selection.budget=0.25",
    "device=cpu",
]


def select(*overrides: str, env: dict, hydra_dir) -> subprocess.CompletedProcess:
    return run_app("datamil.select", *TINY, *overrides, env=env, run_dir=hydra_dir)


def assert_gather_is_the_single_run(shared: Path, single: Path, env: dict, hydra_dir: Path) -> None:
    """Gather the seed files in `shared`; its selection and scores must equal the single process's."""
    gathered = select("n_proxy_seeds=2", "gather=true", f"run_dir={shared}", env=env, hydra_dir=hydra_dir)
    assert gathered.returncode == 0, gathered.stderr[-2000:]
    one = json.loads((single / "selection.json").read_text())
    fanned = json.loads((shared / "selection.json").read_text())
    assert fanned["scores"] == one["scores"] and fanned["selected"] == one["selected"]
    assert fanned["method"] == one["method"] == "metagrad"
    for seed in (0, 1):
        np.testing.assert_array_equal(
            np.load(score_path(shared, seed))["scores"], np.load(score_path(single, seed))["scores"]
        )


@pytest.mark.slow
def test_two_seed_jobs_gathered_equal_one_process_and_a_missing_seed_is_refused(
    tiny_task_data, cli_env, tmp_path
):
    single = select("n_proxy_seeds=2", env=cli_env, hydra_dir=tmp_path / "single")
    assert single.returncode == 0, single.stderr[-2000:]
    shared = tmp_path / "shared"
    for seed in (0, 1):  # two separate jobs, as a launcher runs them
        job = select(
            f"seed={seed}",
            "score_only=true",
            f"run_dir={shared}",
            env=cli_env,
            hydra_dir=tmp_path / f"job{seed}",
        )
        assert job.returncode == 0, job.stderr[-2000:]
        assert "gather=true" in job.stdout and not (shared / "selection.json").exists()
        assert (tmp_path / f"job{seed}" / "config.yaml").is_file()  # each job's config, next to its log
    assert_gather_is_the_single_run(shared, tmp_path / "single", cli_env, tmp_path / "gather")

    score_path(shared, 1).unlink()
    refused = select(
        "n_proxy_seeds=2", "gather=true", f"run_dir={shared}", env=cli_env, hydra_dir=tmp_path / "gather2"
    )
    assert refused.returncode == 2
    assert refused.stderr.strip().count("\n") == 0, refused.stderr
    assert "seeds 1 have no score file" in refused.stderr and "score_only=true" in refused.stderr


def test_check_seed_files_names_missing_foreign_and_unreadable_seeds(tmp_path):
    settings = {"estimator": {"a": 1}, "policy": "p", "data": "d"}
    atomic_write_npz(
        score_path(tmp_path, 0),
        scores=np.zeros(3),
        fingerprint=np.array(fingerprint({**settings, "seed": 0})),
    )
    atomic_write_npz(
        score_path(tmp_path, 1),
        scores=np.zeros(3),
        fingerprint=np.array(fingerprint({**settings, "seed": 9})),
    )
    score_path(tmp_path, 3).write_bytes(b"cut short")
    check_seed_files(tmp_path, [0], settings)
    with pytest.raises(DatamilError) as error:
        check_seed_files(tmp_path, [0, 1, 2, 3], settings)
    message = str(error.value)
    assert "\n" not in message
    assert "seeds 2 have no score file" in message
    assert "seeds 1 were scored with other settings" in message
    assert "seeds 3 cannot be read" in message
    with pytest.raises(DatamilError, match="other settings"):
        check_seed_files(tmp_path, [0], {**settings, "policy": "q"})


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"score_only": True, "gather": True}, "two steps"),
        ({"score_only": True, "run_dir": None}, "need run_dir"),
        ({"gather": True, "method": "iterative"}, "method iterative cannot fan out"),
        ({"gather": True, "method": "random"}, "method random cannot fan out"),
    ],
)
def test_fan_out_settings_that_cannot_work_are_refused(overrides, match):
    method = overrides.pop("method", "topk")
    cfg = OmegaConf.create(
        {
            "score_only": False,
            "gather": False,
            "run_dir": "/shared",
            **overrides,
            "selection": {"method": method},
        }
    )
    with pytest.raises(DatamilError, match=match):
        check_fan_out(cfg)
    check_fan_out(OmegaConf.create({"score_only": False, "gather": False, "run_dir": None, "selection": {}}))


@pytest.mark.slow
@needs_ray
def test_two_seed_jobs_on_a_local_ray_gather_to_the_single_process(tiny_task_data, cli_env, tmp_path):
    """The fan-out as docs/scale_out.md launches it: one `-m` sweep, one Ray task per proxy seed, on a Ray of
    2 CPUs on 127.0.0.1 that the sweep starts and stops; the gather writes the single process's selection."""
    env = ray_env(cli_env)
    single = select("n_proxy_seeds=2", env=env, hydra_dir=tmp_path / "single")
    assert single.returncode == 0, single.stderr[-2000:]
    shared = tmp_path / "shared"
    with local_ray() as ray:
        command = [
            sys.executable, "-m", "datamil.select", "-m", *TINY, "seed=0,1", "score_only=true",
            f"run_dir={shared}", f"hydra.sweep.dir={tmp_path / 'sweep'}", *ray,
        ]  # fmt: skip
        sweep = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    assert sweep.returncode == 0, sweep.stderr[-3000:]
    assert "Ray Launcher is launching 2 jobs" in sweep.stdout + sweep.stderr
    assert sorted(p.name for p in (shared / "scores").glob("seed*.npz")) == ["seed0.npz", "seed1.npz"]
    assert_gather_is_the_single_run(shared, tmp_path / "single", env, tmp_path / "gather")

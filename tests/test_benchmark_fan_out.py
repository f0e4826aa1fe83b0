"""The selection-quality benchmark fanned out, one launcher job per (task, method, seed)
(benchmarks/selection_quality_job.py), and gathered (`selection_quality.py --gather`): the job's config is
the preset's, the gather refuses unfinished runs on one line, and on a local Ray the gathered table equals
the one-process table; a killed job is redone alone by running the sweep again."""

from __future__ import annotations

import csv
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from local_ray import local_ray, needs_ray, ray_env
from omegaconf import OmegaConf

from datamil.cli import CONFIG_DIR

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
TIMING = ("select_s", "train_s", "eval_s", "cpu_s")  # wall and CPU seconds: the only columns that may differ
METHODS = ["metagrad", "random"]


def benchmark(*args: str, env: dict) -> subprocess.CompletedProcess:
    command = [sys.executable, str(BENCHMARKS / "selection_quality.py"), "--preset", "tiny", *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)


def jobs(*args: str, env: dict) -> subprocess.CompletedProcess:
    """A sweep of selection_quality_job.py: one job per (task, method, seed) of the tiny preset."""
    command = [
        sys.executable, str(BENCHMARKS / "selection_quality_job.py"), "-m", "benchmark=tiny",
        "run.task=metaworld/reach", f"run.method={','.join(METHODS)}", "run.seed=0", *args,
    ]  # fmt: skip
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)


def table(out: Path, name: str = "runs.csv") -> list[dict]:
    with open(out / name, newline="") as f:
        return [{k: v for k, v in r.items() if k not in TIMING} for r in csv.DictReader(f)]


def test_a_job_runs_with_the_presets_settings(tmp_path):
    """A job's config, less its `run`, is what `--preset` composes: jobs and the gather share a directory."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import selection_quality_job as job
    finally:
        sys.path.remove(str(BENCHMARKS))
    out = f"output_dir={tmp_path}"
    run = ["run.task=metaworld/reach", "run.method=random@metagrad_threshold", "run.seed=2"]
    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        cfg = compose("selection_quality_job", ["benchmark=tiny", *run, out, "cotrain.steps=7"])
    assert cfg.run.method == "random@metagrad_threshold" and cfg.run.seed == 2
    preset = job.load_benchmark().load_config("tiny", [out, "cotrain.steps=7"])
    assert OmegaConf.to_container(job.preset_of(cfg), resolve=True) == OmegaConf.to_container(
        preset, resolve=True
    )


def test_the_gather_refuses_unfinished_runs_on_one_line(tmp_path, cli_env):
    gather = benchmark(f"output_dir={tmp_path}", f"methods=[{','.join(METHODS)}]", "--gather", env=cli_env)
    assert gather.returncode == 2, gather.stderr[-2000:]
    assert gather.stderr.strip().count("\n") == 0, gather.stderr
    assert "2 of 2 runs have not finished" in gather.stderr
    assert "metaworld/reach:metagrad:0, metaworld/reach:random:0" in gather.stderr
    assert not (tmp_path / "runs.csv").exists()


@pytest.mark.slow
@pytest.mark.sim
@needs_ray
def test_two_jobs_on_a_local_ray_gather_to_the_one_process_table(tmp_path, cli_env):
    env = ray_env(cli_env)
    settings = ["data.workers=1", f"methods=[{','.join(METHODS)}]"]
    one = benchmark(
        f"output_dir={tmp_path / 'one'}", f"data.cache_dir={tmp_path / 'cache1'}", *settings, env=env
    )
    assert one.returncode == 0, one.stderr[-3000:]
    # the fan-out generates its own data: its two jobs start together on one task (task_lock)
    fan = [f"output_dir={tmp_path / 'fan'}", f"data.cache_dir={tmp_path / 'cache2'}", *settings]
    with local_ray() as ray:
        sweep = jobs(*fan, f"hydra.sweep.dir={tmp_path / 'sweep'}", *ray, env=env)
    assert sweep.returncode == 0, sweep.stderr[-3000:]
    assert "Ray Launcher is launching 2 jobs" in sweep.stdout + sweep.stderr
    gather = benchmark(*fan, "--gather", env=env)
    assert gather.returncode == 0, gather.stderr[-3000:]
    expected = table(tmp_path / "one")
    assert sorted(r["method"] for r in expected) == sorted(METHODS)
    assert table(tmp_path / "fan") == expected
    assert table(tmp_path / "fan", "composition.csv") == table(tmp_path / "one", "composition.csv")

    # a job killed during co-training: the gather refuses; the sweep again (on any launcher) redoes it alone
    runs = tmp_path / "fan" / "runs" / "metaworld__reach"
    finished = (runs / "metagrad" / "seed0" / "row.json").stat().st_mtime_ns
    shutil.rmtree(runs / "random" / "seed0")
    refused = benchmark(*fan, "--gather", env=env)
    assert refused.returncode == 2 and "metaworld/reach:random:0" in refused.stderr, refused.stderr
    local = ["hydra/launcher=local", f"hydra.sweep.dir={tmp_path / 'sweep2'}"]  # joblib, as pip installed it
    again = jobs(*fan, *local, env=env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert (runs / "metagrad" / "seed0" / "row.json").stat().st_mtime_ns == finished  # skipped
    gather = benchmark(*fan, "--gather", env=env)
    assert gather.returncode == 0, gather.stderr[-3000:]
    assert table(tmp_path / "fan") == expected

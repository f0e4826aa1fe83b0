"""The LDS truths fanned out: S shards of (truth seed, chunk) units gathered equal, bit for bit, the truths
and LDS one process computes (library, `hydra/launcher=local` and a local Ray), and the gather refuses
missing, foreign or unreadable shards with one line."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch
from conftest import TINY_DATA, TINY_TASK
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from local_ray import local_ray, needs_ray, ray_env
from shard_fixtures import gather_shards, tiny_mlp, train_shards

from datamil.cli import CONFIG_DIR
from datamil.datamodels.lds import linear_datamodeling_score, noise_ceiling, true_surrogates
from datamil.datamodels.lds_shards import LdsSpec, gather_lds_truths, lds_rows, run_lds_shard
from datamil.datamodels.proxy import ProxyConfig, smooth_optim
from datamil.datamodels.shards import shard_path
from datamil.errors import DatamilError
from datamil.lds_shards import lds_spec, row_of
from datamil.policies.build import build_policy

SPEC = LdsSpec(
    seed=3,
    proxy=ProxyConfig(replace(smooth_optim(), total_steps=8, lr=1e-2), batch_size=16),
    n_models=5,  # chunks [0, 1], [2, 3], [4]
    alpha=0.5,
    chunk=2,
    include_target_train=True,
)


def write_shards(data, shard_dir, spec=SPEC, shards=range(3), n_shards=3) -> None:
    train_shards(run_lds_shard, data, shard_dir, spec, shards, n_shards)


def gather(data, shard_dir, spec=SPEC, n_shards=3):
    return gather_shards(gather_lds_truths, data, shard_dir, spec, n_shards)


@pytest.mark.parametrize("mode", ["resample", "reweight"])
def test_shards_gathered_equal_the_single_process_lds(shard_data, tmp_path, mode):
    spec = replace(SPEC, mode=mode)
    prior, val, tt = shard_data
    scores = {
        "a": np.random.default_rng(0).normal(size=prior.n_steps),
        "b": -np.arange(prior.n_steps, dtype=float),
    }
    rows, masks, true = linear_datamodeling_score(
        tiny_mlp(prior), prior, val, scores, spec.proxy, spec.seed, spec.n_models, spec.alpha, mode,
        target_train_store=tt, include_target_train=True,
    )  # fmt: skip
    write_shards(shard_data, tmp_path, spec)
    measured = gather(shard_data, tmp_path, spec)
    np.testing.assert_array_equal(measured.masks, masks)
    np.testing.assert_array_equal(measured.truths, true[None])  # exactly, not within a tolerance
    gathered, ceiling = lds_rows(scores, prior, measured, seed=spec.seed)
    assert gathered == rows and ceiling is None


def test_k_truth_seeds_gathered_equal_one_process_per_seed(shard_data, tmp_path):
    spec = replace(SPEC, truth_seeds=(4, 5))  # 2 seeds x 3 chunks = 6 units over 4 shards
    prior, val, tt = shard_data
    single = np.stack([
        true_surrogates(tiny_mlp(prior), prior, val, spec.masks(prior.n_episodes), spec.proxy, s, chunk=2,
                        target_train_store=tt, include_target_train=True)
        for s in (4, 5)
    ])  # fmt: skip
    write_shards(shard_data, tmp_path, spec, range(4), 4)
    measured = gather(shard_data, tmp_path, spec, 4)
    np.testing.assert_array_equal(measured.truths, single)
    assert measured.seeds == (4, 5) and not np.array_equal(single[0], single[1])
    _, ceiling = lds_rows({"a": np.arange(prior.n_steps, dtype=float)}, prior, measured)
    assert ceiling == noise_ceiling(single)


def test_a_finished_shard_is_kept_and_a_foreign_one_is_trained_again(shard_data, tmp_path):
    write_shards(shard_data, tmp_path, shards=[0])
    path = shard_path(tmp_path, 0, 3)
    finished = path.stat().st_ino  # an atomic write publishes a new file
    write_shards(shard_data, tmp_path, shards=[0])  # the sweep run again: nothing to train
    assert path.stat().st_ino == finished
    write_shards(shard_data, tmp_path, replace(SPEC, alpha=0.3), shards=[0])  # other settings: trained anew
    assert path.stat().st_ino != finished
    write_shards(shard_data, tmp_path, shards=[0, 1, 2])
    np.testing.assert_array_equal(gather(shard_data, tmp_path).masks, SPEC.masks(shard_data[0].n_episodes))


def test_shards_split_whole_units_and_cover_every_one():
    spec = replace(SPEC, truth_seeds=(1, 2))
    parts = [spec.shard_units(s, 4) for s in range(4)]
    flat = [(j, m.tolist()) for part in parts for j, m in part]
    assert flat == [(j, m) for j in (0, 1) for m in ([0, 1], [2, 3], [4])]
    assert [len(p) for p in parts] == [2, 2, 1, 1]
    with pytest.raises(DatamilError, match="n_shards=7 is more than the 6 units"):
        spec.shard_units(0, 7)
    with pytest.raises(DatamilError, match="must be distinct"):
        _ = replace(SPEC, truth_seeds=(1, 1)).seeds


def test_a_missing_foreign_or_unreadable_shard_is_one_line(shard_data, tmp_path):
    write_shards(shard_data, tmp_path, shards=[0, 2])
    with pytest.raises(DatamilError, match=r"shards 1 of 3 are missing in .*shard=<s> n_shards=3") as error:
        gather(shard_data, tmp_path)
    assert "\n" not in str(error.value)
    write_shards(shard_data, tmp_path, replace(SPEC, truth_seeds=(9,)), shards=[1])  # another truth seed
    with pytest.raises(DatamilError, match=r"shards 1 were made with other settings") as error:
        gather(shard_data, tmp_path)
    assert "\n" not in str(error.value)
    prior, val, tt = shard_data
    with pytest.raises(DatamilError, match=r"shards 0, 1, 2 were made with other settings"):
        gather((prior, tt, tt), tmp_path, replace(SPEC, truth_seeds=(9,)))  # another target-val set
    shard_path(tmp_path, 1, 3).write_bytes(b"cut short")
    with pytest.raises(DatamilError, match="shards 1 cannot be read; delete those files"):
        gather(shard_data, tmp_path)


# ------------------------------------------------------------------------------------- entry point
TINY = [
    f"+task={TINY_TASK}",
    *TINY_DATA,
    "policy.hidden=[16,16]",
    "estimator.proxy.optim.total_steps=20",
    "estimator.proxy.batch_size=32",
    "lds.n_models=4",
    "lds.chunk=2",
    "lds.n_boot=200",
    "device=cpu",
    "threads=1",
]


def one_process(data, overrides: list[str]) -> tuple[np.ndarray, np.ndarray, list | None]:
    """(scores, (k, M) truths, LDS rows when k = 1) of the single process, on one thread like the jobs:
    `linear_datamodeling_score` for one truth seed, `true_surrogates` on the same masks for each of k."""
    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        cfg = compose("lds_shards", overrides)
    spec, threads = lds_spec(cfg), torch.get_num_threads()
    prior, val, tt = data.prior, data.target_val, data.target_train
    torch.set_num_threads(1)
    try:
        proxy_policy = build_policy(instantiate(cfg.policy), prior)
        scores = instantiate(cfg.estimator)(
            proxy_policy, prior, val, rng_seed=spec.seed, target_train_store=tt
        )
        if spec.seeds == (spec.seed,):
            rows, _, true = linear_datamodeling_score(
                proxy_policy, prior, val, {"metagrad": scores}, spec.proxy, spec.seed, spec.n_models,
                spec.alpha, spec.mode, cfg.lds.n_boot, spec.subset_seed, tt, True,
            )  # fmt: skip
            return np.asarray(scores), true[None], rows
        masks = spec.masks(prior.n_episodes)
        truths = [
            true_surrogates(proxy_policy, prior, val, masks, spec.proxy, s, spec.mode, target_train_store=tt,
                            include_target_train=True)
            for s in spec.seeds
        ]  # fmt: skip
        return np.asarray(scores), np.stack(truths), None
    finally:
        torch.set_num_threads(threads)


def lds_shards(*args: str, env: dict) -> subprocess.CompletedProcess:
    flags = [a for a in args if a == "-m"]  # Hydra reads its flags before the overrides
    command = [sys.executable, "-m", "datamil.lds_shards", *flags, *TINY, *(a for a in args if a != "-m")]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)


def check_gathered(run_dir, scores, truths, rows) -> None:
    saved = np.load(run_dir / "truths.npz")
    np.testing.assert_array_equal(saved["scores"], scores)
    np.testing.assert_array_equal(saved["truths"], truths)
    result = json.loads((run_dir / "lds.json").read_text())
    assert result["truth_seeds"] and len(result["rows"]) == 1
    if rows is not None:  # the LDS row of `linear_datamodeling_score`, to the last bit
        assert result["rows"] == [row_of(r) for r in rows]


@pytest.mark.slow
def test_two_shard_jobs_on_the_local_launcher_gather_to_one_process(tiny_task_data, cli_env, tmp_path):
    """`-m 'shard=range(0,2)'` on hydra/launcher=local, then `gather=true`: the single process's LDS; a
    gather missing a shard refuses on one line."""
    shards = f"shard_dir={tmp_path / 'shards'}"
    sweep = lds_shards(
        "-m", "shard=range(0,2)", "n_shards=2", shards, "hydra/launcher=local",
        f"hydra.sweep.dir={tmp_path / 'sweep'}", env=cli_env,
    )  # fmt: skip
    assert sweep.returncode == 0, sweep.stderr[-3000:]
    gathered = lds_shards(
        "n_shards=2", shards, "gather=true", f"hydra.run.dir={tmp_path / 'run'}", env=cli_env
    )
    assert gathered.returncode == 0, gathered.stderr[-3000:]
    check_gathered(tmp_path / "run", *one_process(tiny_task_data, TINY))

    shard_path(tmp_path / "shards", 1, 2).unlink()
    refused = lds_shards("n_shards=2", shards, "gather=true", f"hydra.run.dir={tmp_path / 'r2'}", env=cli_env)
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines() == [
        f"error: cannot gather the LDS truths: shards 1 of 2 are missing in {tmp_path / 'shards'}; train them "
        "with the same settings (shard=<s> n_shards=2), then gather again"
    ]


@pytest.mark.slow
@needs_ray
def test_two_shard_jobs_on_a_local_ray_gather_to_one_process(tiny_task_data, cli_env, tmp_path):
    """The fan-out as docs/scale_out.md launches it, on a Ray of 2 CPUs on 127.0.0.1 that the sweep starts
    and stops: two truth seeds, one Ray task per shard; the gathered truths are those of one process."""
    env, seeds = ray_env(cli_env), "lds.truth_seeds=[1,2]"
    shards = f"shard_dir={tmp_path / 'shards'}"
    with local_ray() as ray:
        sweep = lds_shards(
            "-m",
            "shard=0,1",
            "n_shards=2",
            seeds,
            shards,
            f"hydra.sweep.dir={tmp_path / 'sweep'}",
            *ray,
            env=env,
        )
    assert sweep.returncode == 0, sweep.stderr[-3000:]
    assert "Ray Launcher is launching 2 jobs" in sweep.stdout + sweep.stderr
    gathered = lds_shards(
        "n_shards=2", seeds, shards, "gather=true", f"hydra.run.dir={tmp_path / 'run'}", env=env
    )
    assert gathered.returncode == 0, gathered.stderr[-3000:]
    scores, truths, rows = one_process(tiny_task_data, [*TINY, seeds])
    check_gathered(tmp_path / "run", scores, truths, rows)
    assert json.loads((tmp_path / "run" / "lds.json").read_text())["noise_ceiling"]["k"] == 2

"""Scale-out of the regression datamodel: K shards gathered reproduce the single-process estimator, and
the gather refuses incomplete, foreign or unreadable shard sets with one line."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
from conftest import TINY_DATA, TINY_TASK
from shard_fixtures import gather_shards, tiny_mlp, train_shards

from datamil.datamodels.proxy import ProxyConfig, smooth_optim
from datamil.datamodels.regression import (
    RegressionSpec,
    gather_regression,
    run_regression,
    run_regression_shard,
)
from datamil.datamodels.shards import shard_path
from datamil.errors import DatamilError

SPEC = RegressionSpec(
    rng_seed=3,
    proxy=ProxyConfig(replace(smooth_optim(), total_steps=8, lr=1e-2), batch_size=16),
    n_models=7,  # chunks [0, 1], [2, 3], [4, 5], [6]
    alpha=0.5,
    chunk=2,
)


def write_shards(data, shard_dir, spec=SPEC, shards=range(3), n_shards=3) -> None:
    train_shards(run_regression_shard, data, shard_dir, spec, shards, n_shards)


def gather(data, shard_dir, spec=SPEC, n_shards=3):
    return gather_shards(gather_regression, data, shard_dir, spec, n_shards)


@pytest.mark.parametrize("include_target_train", [False, True])
def test_three_shards_gathered_equal_the_single_process_estimator(shard_data, tmp_path, include_target_train):
    spec = replace(SPEC, include_target_train=include_target_train)
    prior, val, tt = shard_data
    names = ("proxy", "n_models", "alpha", "model", "chunk", "include_target_train")
    kwargs = {name: getattr(spec, name) for name in names}
    single = run_regression(tiny_mlp(prior), prior, val, spec.rng_seed, target_train_store=tt, **kwargs)
    write_shards(shard_data, tmp_path, spec)
    sharded = gather(shard_data, tmp_path, spec)
    np.testing.assert_array_equal(sharded.info["masks"], single.info["masks"])
    np.testing.assert_allclose(sharded.info["surrogates"], single.info["surrogates"], rtol=1e-12)
    np.testing.assert_allclose(sharded.scores, single.scores, rtol=1e-9, atol=1e-12)
    assert sharded.info["intercept"] == pytest.approx(single.info["intercept"], rel=1e-9)
    assert set(sharded.timings) == {"train_models", "fit"}


def test_shards_split_whole_chunks_and_cover_every_model():
    parts = [SPEC.shard_models(k, 3) for k in range(3)]
    assert [p.tolist() for p in parts] == [[0, 1, 2, 3], [4, 5], [6]]
    with pytest.raises(DatamilError, match="n_shards=5 is more than the 4 vmapped chunks"):
        SPEC.shard_models(0, 5)
    with pytest.raises(DatamilError, match="shard=3 is outside 0..2"):
        SPEC.shard_models(3, 3)


def test_a_missing_shard_is_one_line_that_names_it(shard_data, tmp_path):
    write_shards(shard_data, tmp_path, shards=[0, 2])
    with pytest.raises(DatamilError, match=r"shards 1 of 3 are missing in .*shard=<k> n_shards=3") as error:
        gather(shard_data, tmp_path)
    assert "\n" not in str(error.value)
    with pytest.raises(
        DatamilError, match=r"shards 0, 1, 2, 3 of 4 are missing .*holds shards of n_shards=3"
    ):
        gather(shard_data, tmp_path, replace(SPEC, chunk=1), n_shards=4)


def test_a_shard_from_another_config_or_data_is_refused(shard_data, tmp_path):
    write_shards(shard_data, tmp_path)
    write_shards(shard_data, tmp_path, replace(SPEC, alpha=0.3), shards=[1])
    with pytest.raises(DatamilError, match=r"shards 1 were made with other settings") as error:
        gather(shard_data, tmp_path)
    assert "\n" not in str(error.value)
    prior, val, tt = shard_data
    with pytest.raises(DatamilError, match=r"shards 0, 1, 2 were made with other settings"):
        gather((prior, tt, tt), tmp_path)  # another target-val set
    write_shards(shard_data, tmp_path, shards=[1])
    lasso = gather(shard_data, tmp_path, replace(SPEC, model="lasso"))  # the fit is not part of the shards
    assert np.all(np.isfinite(lasso.scores))


def test_a_shard_file_is_never_half_written(shard_data, tmp_path, monkeypatch):
    write_shards(shard_data, tmp_path, shards=[0])
    before = shard_path(tmp_path, 0, 3).read_bytes()

    def killed(*args):
        raise KeyboardInterrupt  # the job dies between writing the bytes and publishing the file

    monkeypatch.setattr("datamil.io.os.replace", killed)
    with pytest.raises(KeyboardInterrupt):
        write_shards(shard_data, tmp_path, shards=[0, 1])
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "shard-0000-of-0003.npz"
    ]  # no temp file, no shard 1
    assert shard_path(tmp_path, 0, 3).read_bytes() == before
    shard_path(tmp_path, 1, 3).write_bytes(before[: len(before) // 2])  # e.g. a copy cut short by hand
    write_shards(shard_data, tmp_path, shards=[2])
    with pytest.raises(DatamilError, match="shards 1 cannot be read; delete those files"):
        gather(shard_data, tmp_path)


TINY = [
    *TINY_DATA,
    "policy.hidden=[16,16]",
    "estimator.n_models=6",
    "estimator.chunk=2",
    "estimator.proxy.optim.total_steps=20",
    "estimator.proxy.batch_size=32",
]


def test_entry_point_shards_over_a_launcher_sweep_then_gathers_and_selects(tiny_task_data, cli_env, tmp_path):
    """`-m 'shard=range(0,3)'` (one job per shard), then `gather=true` writes the run datamil.select writes."""
    module = [sys.executable, "-m", "datamil.regression_shards"]
    overrides = [f"+task={TINY_TASK}", *TINY, "n_shards=3", f"shard_dir={tmp_path / 'shards'}"]
    run = dict(env=cli_env, capture_output=True, text=True, timeout=300)
    sweep = [*module, "-m", *overrides, "shard=range(0,3)", f"hydra.sweep.dir={tmp_path / 'sweep'}"]
    sweep = subprocess.run(sweep, **run)
    assert sweep.returncode == 0, sweep.stderr[-2000:]
    gathered = subprocess.run(
        [*module, *overrides, "gather=true", f"hydra.run.dir={tmp_path / 'run'}"], **run
    )
    assert gathered.returncode == 0, gathered.stderr[-2000:]
    assert "next: python -m datamil.cotrain" in gathered.stdout
    selection = json.loads((tmp_path / "run" / "selection.json").read_text())
    assert selection["method"] == "regression" and len(selection["scores"]) == tiny_task_data.prior.n_episodes

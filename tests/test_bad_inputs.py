"""Bad input a new user hits with `python -m datamil.select ... data=rlds`: each fails on one line, early,
with nothing half-written (or, for a stale cache, is not silently reused)."""

from __future__ import annotations

import logging
import math
import subprocess
from functools import partial

import numpy as np
import pytest
import rlds_fixtures as fx
from entry_points import run_app
from hydra.errors import InstantiationException
from omegaconf import MissingMandatoryValue, OmegaConf

from datamil.cli import require_values, user_message
from datamil.data.sources import TaskData
from datamil.data.store import TrajectoryStore
from datamil.errors import DataError, DatamilError
from datamil.policies.build import reads_state
from datamil.policies.mlp import MLPPolicy
from datamil.policies.vision import VisionPolicy
from datamil.selection import SelectionConfig
from datamil.selection.pipeline import run_selection
from datamil.training.cotraining import build_mixture

RLDS_USAGE = "data=rlds needs data.prior=<RLDS dir or name> and data.target=<RLDS dir of target demos>"
MLP = partial(MLPPolicy, hidden=(8,))


def one_error_line(result: subprocess.CompletedProcess) -> str:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr[-2000:]
    return lines[0]


def task_data(prior_dim: int = 3, target_dim: int = 3, image: bool = False) -> TaskData:
    """A 4-episode prior and 3 + 2 target episodes, with states of the given sizes."""
    prior = TrajectoryStore.from_episodes(fx.make_episodes(4, 5, prior_dim, 2, image, 0, "prior"))
    target = TrajectoryStore.from_episodes(fx.make_episodes(5, 5, target_dim, 2, image, 1, "target"))
    return TaskData("t", prior, target.subset([0, 1, 2]), target.subset([3, 4]))


def select(data: TaskData, run_dir, estimate, factory=MLP, **cfg):
    return run_selection(data, factory, estimate, "fake", SelectionConfig(**cfg), [0], run_dir, {})


def must_not_run(*args, **kwargs):
    raise AssertionError("the estimator ran although the input was refused up front")


# ---------------------------------------------------------------- 1. a re-written RLDS dataset
def test_rlds_dataset_rewritten_in_place_is_converted_again(tmp_path):
    pytest.importorskip("tensorflow_datasets")
    from datamil.data.rlds import write_rlds
    from datamil.data.sources import RLDSSource

    def write_and_load(seed: int) -> tuple[np.ndarray, np.ndarray]:
        episodes = fx.make_episodes(n=3, steps=4, image=False, seed=seed)
        path = write_rlds(episodes, tmp_path / "data", "toy_rewrite")
        source = RLDSSource(
            prior=str(path),
            target=str(path),
            n_target_val=1,
            cache_dir=str(tmp_path / "c"),
            normalization="none",
        )
        return np.concatenate([e.actions for e in episodes]), np.asarray(
            source.load("t").prior.arrays["action"]
        )

    written, read = write_and_load(seed=0)
    np.testing.assert_array_equal(read, written)
    rewritten, read = write_and_load(seed=1)
    assert not np.array_equal(rewritten, written)
    np.testing.assert_array_equal(read, rewritten)


# ---------------------------------------------------------------- 2. data=rlds without data.target
@pytest.mark.parametrize("module", ["datamil.select", "datamil.cotrain"])
def test_rlds_without_target_is_one_line_before_anything_runs(module, cli_env, tmp_path):
    result = run_app(
        module, "+task=metaworld/reach", "data=rlds", "data.prior=/x", env=cli_env, run_dir=tmp_path
    )
    assert one_error_line(result) == f"error: data.target is not set: {RLDS_USAGE}"
    assert not (tmp_path / "config.yaml").exists()


def test_missing_values_name_the_keys_and_how_to_set_them():
    rlds = {"_target_": "datamil.data.sources.RLDSSource", "prior": "???", "target": "???"}
    with pytest.raises(DatamilError, match=f"^data.prior, data.target are not set: {RLDS_USAGE}$"):
        require_values(OmegaConf.create({"data": rlds}))
    with pytest.raises(
        DatamilError, match="^checkpoint is not set: add checkpoint=<value> to the command line$"
    ):
        require_values(OmegaConf.create({"checkpoint": "???", "seed": 0}))
    require_values(OmegaConf.create({"data": {**rlds, "prior": "a", "target": "b"}}))


def test_user_errors_are_one_line_also_when_instantiate_wrapped_them():
    cfg = OmegaConf.create({"data": {"target": "???"}})
    with pytest.raises(MissingMandatoryValue) as missing:
        _ = cfg.data.target
    assert (
        user_message(missing.value) == "data.target is not set; add data.target=<value> to the command line"
    )
    wrapped = InstantiationException("Error in call to target\nDatamilError(...)")
    wrapped.__cause__ = DatamilError("bad budget")
    assert user_message(wrapped) == "bad budget"
    assert user_message(ValueError("a bug")) is None


# ---------------------------------------------------------------- 3. selection settings, up front
@pytest.mark.parametrize(
    "settings, message",
    [
        ({"budget": 0.0}, "must be a fraction in \\(0, 1\\]"),
        ({"budget": 1.5}, "must be a fraction in \\(0, 1\\]"),
        ({"budget": math.nan}, "must be a fraction in \\(0, 1\\]"),
        ({"aggregate": "max"}, "aggregate='max' is not one of"),
        ({"method": "threshold", "cutoff": math.nan}, "cutoff=nan must be a finite score"),
        ({"method": "iterative", "rounds": 0}, "rounds=0 must be a whole number >= 1"),
        ({"method": "iterative", "drop_percentile": 20.0, "readmit_percentile": 20.0}, "readmit < drop"),
        ({"method": "iterative", "drop_percentile": 120.0}, "readmit < drop <= 100"),
        ({"method": "iterative", "readmit_percentile": -5.0}, "0 <= readmit"),
        ({"method": "refine", "pool_method": "all_prior"}, "pool_method='all_prior' ranks nothing"),
        ({"method": "refine", "pool_method": "iterative"}, "ranks nothing to refine"),
        ({"method": "refine", "budget": 0.3, "pool_share": 0.2}, "pool_share=0.2 must be in \\(budget=0.3"),
        ({"method": "refine", "keep_share": 0.0}, "keep_share 0.0 must be a fraction in \\(0, 1\\]"),
        ({"method": "refine", "rounds": 0}, "rounds=0 must be a whole number"),
    ],
)
def test_selection_settings_are_refused_on_one_line(settings, message):
    with pytest.raises(DatamilError, match=message) as error:
        SelectionConfig(**settings)
    assert "\n" not in str(error.value)


def test_settings_that_only_some_methods_use_are_checked_only_there():
    SelectionConfig(method="threshold", cutoff=-0.5)  # stricter than 0: only clearly helpful ones
    SelectionConfig(method="topk", rounds=0, drop_percentile=10.0, readmit_percentile=50.0)


def test_select_app_refuses_a_bad_budget_before_loading_data(cli_env, tmp_path):
    overrides = ["+task=metaworld/reach", "data=rlds", "data.prior=/nope", "data.target=/nope"]
    result = run_app("datamil.select", *overrides, "selection.budget=2", env=cli_env, run_dir=tmp_path)
    assert "selection budget 2 must be a fraction in (0, 1]" in one_error_line(result)  # not "/nope ..."
    assert not (tmp_path / "config.yaml").exists()


# ---------------------------------------------------------------- 4. prior and target states differ
def test_state_sizes_that_differ_fail_on_one_line_before_scoring(tmp_path):
    data = task_data(prior_dim=3, target_dim=4)
    with pytest.raises(DataError, match="prior's state is \\(3,\\).*target-train state is \\(4,\\)") as error:
        select(data, tmp_path, must_not_run)
    assert "policy=bc_image_only" in str(error.value) and "data.mapping={state_keys:" in str(error.value)
    with pytest.raises(DataError, match="\\(3,\\).*\\(4,\\).*policy=bc_image_only"):
        build_mixture(data.target_train, data.prior, data.prior.episodes.episode_id[:2], 1.0, 1.0, 8, 0)
    assert not list(tmp_path.iterdir())


def test_an_image_only_policy_mixes_priors_whose_state_differs():
    data = task_data(prior_dim=3, target_dim=4, image=True)
    image_only = partial(VisionPolicy, image_keys=["image_primary"], use_state=False)
    assert not reads_state(image_only)
    assert reads_state(MLP) and reads_state(partial(VisionPolicy, image_keys=["image_primary"]))
    ids = data.prior.episodes.episode_id[:2]
    mixture = build_mixture(data.target_train, data.prior, ids, 1.0, 1.0, 8, 0, use_state=False)
    assert mixture.store.obs_keys == ["image_primary"] and mixture.n_prior_episodes == 2


# ---------------------------------------------------------------- 5. scores that cannot tell the prior apart
def constant_dim_data() -> TaskData:
    """State dimension 1 is constant in the prior and varies in the target."""
    data = task_data()
    data.prior.arrays["obs/state"][:, 1] = 0.5
    return data


@pytest.mark.parametrize("fill", [0.0, math.nan])
def test_all_zero_or_nonfinite_scores_are_refused_with_nothing_written(fill, tmp_path):
    data = task_data()
    estimate = lambda policy, prior, *a, **k: np.full(prior.n_steps, fill)  # noqa: E731
    with pytest.raises(DatamilError, match="could not tell the prior trajectories apart") as error:
        select(data, tmp_path, estimate)
    assert "constant in the prior" in str(error.value) and "proxy run too short" in str(error.value)
    assert not (tmp_path / "selection.json").exists() and not (tmp_path / "scores").exists()


def test_state_dimensions_constant_in_the_prior_are_named_in_a_warning(tmp_path, caplog):
    data = constant_dim_data()
    estimate = lambda policy, prior, *a, **k: np.arange(prior.n_steps, dtype=float)  # noqa: E731
    with caplog.at_level(logging.WARNING, logger="datamil.selection.pipeline"):
        select(data, tmp_path, estimate, budget=0.5)
    warnings = [r.getMessage() for r in caplog.records if "constant in the prior" in r.getMessage()]
    assert len(warnings) == 2 and all("state dimensions [1]" in w for w in warnings)
    assert "target-train" in warnings[0] and "target-val" in warnings[1]
    caplog.clear()
    select(task_data(), tmp_path / "clean", estimate, budget=0.5)
    assert not [r for r in caplog.records if "constant in the prior" in r.getMessage()]


def test_a_real_estimator_on_a_constant_prior_dimension_is_refused(tmp_path):
    """The case the check is for: metagrad on a prior whose state dimension 1 never moves scores 0."""
    from datamil.datamodels.metagrad import estimate_metagrad
    from datamil.datamodels.proxy import ProxyConfig, smooth_optim

    optim = smooth_optim().__class__(**{**smooth_optim().__dict__, "total_steps": 40})
    estimate = partial(estimate_metagrad, proxy=ProxyConfig(optim=optim, batch_size=64))
    factory = partial(MLPPolicy, hidden=(32, 32))
    with pytest.raises(DatamilError, match="could not tell the prior trajectories apart"):
        select(constant_dim_data(), tmp_path, estimate, factory)
    assert not (tmp_path / "selection.json").exists()

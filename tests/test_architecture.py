"""The architecture's contracts (docs/architecture.md): registries derived from config groups, one home
for every default, the Policy capabilities, and scipy's intervals equal to the former hand-written ones."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import math
import textwrap
import warnings

import numpy as np
import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf
from scipy.stats import spearmanr

from datamil.data.sources import DATA_SOURCES
from datamil.datamodels import ESTIMATORS
from datamil.datamodels.lds import spearman_interval
from datamil.errors import DatamilError, UnknownNameError
from datamil.policies import POLICIES
from datamil.real_robot.drivers import ROBOTS
from datamil.registry import group_files, load_option
from datamil.selection import SelectionConfig
from datamil.sim_tasks.rollout import wilson_interval

REGISTRIES = {"policy": POLICIES, "estimator": ESTIMATORS, "data": DATA_SOURCES, "robot": ROBOTS}
# Constructor defaults that differ from the YAML on purpose: None = "the class's own choice".
SAME_MEANING = {("policy", "head"), ("policy", "image_keys"), ("policy", "render")}


@pytest.mark.parametrize("group", REGISTRIES)
def test_registry_is_the_config_group(group):
    registry = REGISTRIES[group]
    declared = []
    for name in group_files(group):
        node = OmegaConf.load(group_files(group)[name])
        node = node.get("robot", {}) if group == "robot" else node
        if "_target_" in node:
            declared.append(name)
            assert registry.get(name) is not None
    assert registry.names() == sorted(declared) and declared
    with pytest.raises(UnknownNameError) as info:
        registry.get("no_such_plugin")
    assert "\n" not in str(info.value) and declared[0] in str(info.value)


def test_a_preset_resolves_to_its_plugin_and_a_class_to_its_own_option():
    assert POLICIES.get("bc_image_only") is POLICIES.get("bc_image")
    assert POLICIES.name_of(POLICIES.get("bc_image")) == "bc_image"
    assert "bc_image_only" not in POLICIES.names()
    with pytest.raises(DatamilError, match="datamil/configs/policy/<name>.yaml"):
        POLICIES.name_of(int)


def _defaults(target) -> dict:
    if dataclasses.is_dataclass(target):
        return {
            f.name: f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            for f in dataclasses.fields(target)
            if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
        }
    target = getattr(target, "__wrapped__", target)
    return {k: p.default for k, p in inspect.signature(target).parameters.items() if p.default is not p.empty}


def _plain(value):
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    return value


@pytest.mark.parametrize("group", REGISTRIES)
def test_python_defaults_equal_the_yaml(group):
    """Where Python restates a configured default, it must be the YAML's value (derived ones are by
    construction); every estimator's run function reads its defaults from its config."""
    registry, drift = REGISTRIES[group], []
    for name in registry.names():
        node = registry.config(name)
        defaults = _defaults(registry.get(name))
        for key in node:
            if str(key).startswith("_") or key not in defaults or (group, key) in SAME_MEANING:
                continue
            if defaults[key] is None:  # None in Python = "worked out from the other settings"
                continue
            if OmegaConf.is_interpolation(node, key) or OmegaConf.is_missing(node, key):
                continue
            value = node[key]
            value = instantiate(value) if OmegaConf.is_dict(value) and "_target_" in value else value
            value = OmegaConf.to_container(value) if OmegaConf.is_config(value) else value
            if _plain(defaults[key]) != _plain(value):
                drift.append(f"{group}/{name}.yaml {key}: Python {defaults[key]!r}, YAML {value!r}")
    assert not drift, "; ".join(drift)


def _default_sources(target) -> dict[str, ast.expr]:
    """parameter (or dataclass field) -> the expression its default is written as in the source."""
    if dataclasses.is_dataclass(target):
        tree = ast.parse(textwrap.dedent(inspect.getsource(target))).body[0]
        return {
            node.target.id: node.value
            for node in tree.body
            if isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and node.value is not None
        }
    func = getattr(target, "__wrapped__", target)
    func = func.__init__ if inspect.isclass(func) else func
    args = ast.parse(textwrap.dedent(inspect.getsource(func))).body[0].args
    positional = args.posonlyargs + args.args
    pairs = [
        *zip(positional[len(positional) - len(args.defaults) :], args.defaults, strict=True),
        *zip(args.kwonlyargs, args.kw_defaults, strict=True),
    ]
    return {arg.arg: default for arg, default in pairs if default is not None}


def _reads_the_config(expr: ast.expr, key: str) -> bool:
    """True when the default is `<configured mapping>["<key>"]` (possibly wrapped, e.g. in a factory)."""
    return any(
        isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant) and node.slice.value == key
        for node in ast.walk(expr)
    )


@pytest.mark.parametrize("group", REGISTRIES)
def test_python_reads_every_configured_default_from_the_yaml(group):
    """The YAML is the only source (docs/architecture.md, "Defaults live in the YAML"): a Python default for
    a setting the plug-in's YAML carries is read with `configured`, never restated as a literal. Only None
    (= worked out from the other settings, or the class's own choice) and a required parameter are exempt."""
    registry, restated = REGISTRIES[group], []
    for name in registry.names():
        node = registry.config(name)
        sources = _default_sources(registry.get(name))
        for key in node:
            key = str(key)
            if key.startswith("_") or key not in sources or (group, key) in SAME_MEANING:
                continue
            if OmegaConf.is_interpolation(node, key) or OmegaConf.is_missing(node, key):
                continue
            expr = sources[key]
            if isinstance(expr, ast.Constant) and expr.value is None:
                continue
            if not _reads_the_config(expr, key):
                restated.append(f"{group}/{name}.yaml {key}: Python restates {ast.unparse(expr)}")
    assert not restated, "; ".join(restated)


def test_metagrad_defaults_are_its_configs():
    run = ESTIMATORS.get("metagrad")
    assert inspect.signature(run).parameters["include_target_train"].default is True
    assert load_option("estimator", "metagrad").include_target_train is True


def test_selection_defaults_are_the_method_presets():
    cfg = SelectionConfig()
    iterative = load_option("method", "iterative")
    assert (cfg.rounds, cfg.drop_percentile, cfg.readmit_percentile) == (
        iterative.rounds, iterative.drop_percentile, iterative.readmit_percentile
    )  # fmt: skip
    assert (cfg.budget, cfg.aggregate, cfg.cutoff) == (
        load_option("method", "topk").budget, load_option("method", "topk").aggregate,
        load_option("method", "threshold").cutoff,
    )  # fmt: skip
    refine = load_option("method", "refine")
    assert (cfg.pool_method, cfg.pool_share, cfg.keep_share) == (
        refine.pool_method, refine.pool_share, refine.keep_share
    )  # fmt: skip
    assert "drop_percentile" not in {
        k for k, p in inspect.signature(__import__("datamil.selection.strategies").selection.strategies
                                        .iterative_prune).parameters.items() if p.default is not p.empty
    }  # fmt: skip


def test_policy_capabilities_are_named():
    state = POLICIES.get("bc_mlp")(5, 2)
    chunks = POLICIES.get("diffusion")(5, 2)
    image = POLICIES.get("bc_image")(5, 2, image_keys=("image_primary",), image_size=(16, 16), channels=(4,),
                                     strides=(2,), keypoints=2, feature_dim=4)  # fmt: skip
    assert state.capabilities == {"normalization"} and state.horizon is None and state.n_action_steps == 1
    assert chunks.capabilities == {"normalization", "chunks"} and chunks.horizon == 8
    assert image.capabilities == {"normalization", "images"} and image.reads_images
    assert state.camera_config() is None and state.check_data({}) is None and state.reset_sampler(0) is None


def _wilson_closed_form(k: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """The former hand-written interval (Wilson 1927)."""
    if n <= 0:
        return 0.0, 1.0
    p, z2 = k / n, z * z
    denom = 1.0 + z2 / n
    center, half = (p + z2 / (2 * n)) / denom, z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denom
    return max(0.0, center - half), min(1.0, center + half)


def test_scipy_wilson_equals_the_closed_form():
    for n in range(0, 120):
        for k in range(n + 1):
            assert wilson_interval(k, n) == pytest.approx(_wilson_closed_form(k, n), abs=1e-12)


def _bootstrap_by_hand(pred, true, n_boot, seed, level=0.95):
    """The former hand-written percentile bootstrap."""
    rng = np.random.default_rng(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        boots = [spearmanr(pred[i], true[i]).statistic for i in (rng.integers(0, len(pred), len(pred))
                                                                 for _ in range(n_boot))]  # fmt: skip
    return tuple(np.nanquantile(boots, [(1 - level) / 2, (1 + level) / 2]))


@pytest.mark.parametrize(("n", "n_boot"), [(40, 300), (5, 200)])  # n=5: some resamples are constant (NaN)
def test_scipy_bootstrap_equals_the_hand_written_one(n, n_boot):
    rng = np.random.default_rng(n)
    pred = rng.normal(size=n)
    true = pred + rng.normal(size=n)
    rho, low, high = spearman_interval(pred, true, n_boot=n_boot, seed=3)
    assert rho == spearmanr(pred, true).statistic
    assert (low, high) == _bootstrap_by_hand(pred, true, n_boot, 3)

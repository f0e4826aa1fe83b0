"""Selection baselines: the contract of every registered method on tiny real MetaWorld data, the retrieval
math against brute force and planted answers, and (slow) the selection-quality benchmark end to end."""

from __future__ import annotations

import copy
import csv
import dataclasses
import functools
import json
from pathlib import Path

import numpy as np
import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from datamil.cli import CONFIG_DIR
from datamil.data.schema import Episode, EpisodeMeta
from datamil.data.sources import TaskData
from datamil.data.store import TrajectoryStore
from datamil.datamodels.metagrad import estimate_metagrad
from datamil.datamodels.proxy import ProxyConfig
from datamil.errors import DatamilError
from datamil.policies.mlp import MLPPolicy
from datamil.scripts import load_script
from datamil.selection import SELECTION_METHODS, SelectionConfig, SelectionRequest, read_selection
from datamil.selection.baselines import query_demos
from datamil.selection.methods import DATAMODEL_METHODS, RESCORING_METHODS, UNRANKED_METHODS
from datamil.selection.pipeline import run_selection
from datamil.selection.retrieval import (
    dtw_costs,
    ksg_contributions,
    pad_episodes,
    spread_steps,
    sub_trajectories,
    subsequence_dtw,
)
from datamil.training import OptimConfig

ROOT = Path(__file__).resolve().parent.parent
BASELINES = [n for n in SELECTION_METHODS.names() if n not in DATAMODEL_METHODS]
RANKED = [n for n in BASELINES if n not in UNRANKED_METHODS]
CHEAP = {  # keep the VAE fits short in tests
    "behavior_retrieval": {"steps": 60, "batch_size": 128},
    "deminf": {"steps": 60, "batch_size": 128},
}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One torch thread: the small VAE and proxies only lose time to thread hand-offs on a busy machine."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def cheap_estimator():
    """The real exact-metagradient estimator on a 4-step proxy: what the datamodel methods run, but cheap."""
    optim = OptimConfig(lr=1e-3, eps=1e-2, warmup_steps=0, total_steps=4, min_lr_ratio=1.0, grad_clip=None)
    return functools.partial(estimate_metagrad, proxy=ProxyConfig(optim=optim, batch_size=32))


def request(data: TaskData, method: str, budget: float = 0.25, seed: int = 0, **options) -> SelectionRequest:
    cfg = SelectionConfig(method=method, budget=budget, options={**CHEAP.get(method, {}), **options})
    return SelectionRequest(data, cfg, seed, lambda active: np.zeros(data.prior.n_episodes))


# ------------------------------------------------------------------------------------ every method, real data
@pytest.mark.sim
@pytest.mark.parametrize("name", SELECTION_METHODS.names())
def test_every_method_writes_a_valid_selection(name, tiny_task_data, tmp_path):
    data = tiny_task_data
    cfg = SelectionConfig(
        method=name, budget=0.25, cutoff=1e9, rounds=2, pool_share=0.5, options=CHEAP.get(name, {})
    )
    policy = functools.partial(MLPPolicy, hidden=(16,))
    selection = run_selection(data, policy, cheap_estimator(), "metagrad", cfg, [0], tmp_path, {})
    again = read_selection(tmp_path / "selection.json")
    ids = data.prior.episodes.episode_id
    assert again.selected == selection.selected and set(again.scores) == set(ids)
    assert len(set(selection.selected)) == len(selection.selected) and set(selection.selected) <= set(ids)
    assert all(np.isfinite(list(selection.scores.values())))
    expected = {"all_prior": len(ids), "target_only": 0, "threshold": len(ids)}
    k = max(1, round(0.25 * len(ids)))
    if name in RESCORING_METHODS:  # the budget is a share of the pool that survives pruning
        assert 1 <= len(selection.selected) <= k
    else:
        assert len(selection.selected) == expected.get(name, k)
    assert selection.method == ("metagrad" if name in DATAMODEL_METHODS else name)


@pytest.mark.sim
@pytest.mark.parametrize("name", RANKED)
@pytest.mark.parametrize("budget", [0.1, 0.5, 1.0])
def test_ranked_baselines_keep_the_budget(name, budget, tiny_task_data):
    scores, chosen = SELECTION_METHODS.get(name)(request(tiny_task_data, name, budget))
    n = tiny_task_data.prior.n_episodes
    assert scores.shape == (n,) and np.all(np.isfinite(scores))
    assert len(chosen) == max(1, round(budget * n)) == len(np.unique(chosen))
    worst_kept, best_left = scores[chosen].max(), np.delete(scores, chosen).min(initial=np.inf)
    assert worst_kept <= best_left  # the kept ones are the lowest scores


@pytest.mark.sim
def test_refine_keeps_the_best_scored_of_the_retrieval_pool(tiny_task_data):
    """refine = the datamodel's top-k inside the pool_share a retrieval method ranks closest; the proxy is
    trained on that pool (the scorer sees it as `active`), and nothing outside it is scored or kept."""
    n = tiny_task_data.prior.n_episodes
    planted = np.random.default_rng(0).permutation(n).astype(float)  # the "datamodel": lower = better
    asked = []

    def scorer(active):
        asked.append(np.asarray(active))
        out = np.full(n, np.nan)
        out[active] = planted[active]
        return out

    cfg = SelectionConfig(method="refine", budget=0.25, pool_share=0.5, rounds=1, keep_share=0.25)
    scores, chosen = SELECTION_METHODS.get("refine")(SelectionRequest(tiny_task_data, cfg, 0, scorer))
    _, pool = SELECTION_METHODS.get(cfg.pool_method)(request(tiny_task_data, cfg.pool_method, 0.5))
    np.testing.assert_array_equal(asked[0], pool)  # one round, estimated around the pool only
    k = max(1, round(0.25 * n))
    assert len(chosen) == k and set(chosen) <= set(pool)
    np.testing.assert_array_equal(np.sort(chosen), np.sort(pool[np.argsort(planted[pool])[:k]]))
    # the unscored get the pool's worst score
    assert np.all(np.isfinite(scores)) and scores.max() == planted[pool].max()
    # keep_share below the budget keeps that many of the same ranking; above it, the budget caps it
    for keep, kept in ((0.1, max(1, round(0.1 * n))), (0.4, k)):
        cfg = dataclasses.replace(cfg, keep_share=keep)
        _, chosen = SELECTION_METHODS.get("refine")(SelectionRequest(tiny_task_data, cfg, 0, scorer))
        np.testing.assert_array_equal(np.sort(chosen), np.sort(pool[np.argsort(planted[pool])[:kept]]))


@pytest.mark.sim
@pytest.mark.parametrize("name", BASELINES)
def test_baselines_are_functions_of_data_and_seed(name, tiny_task_data):
    first = SELECTION_METHODS.get(name)(request(tiny_task_data, name, seed=3))
    second = SELECTION_METHODS.get(name)(request(tiny_task_data, name, seed=3))
    np.testing.assert_array_equal(first[0], second[0])
    np.testing.assert_array_equal(first[1], second[1])


def test_same_task_success_takes_the_targets_own_successes_and_needs_them(tiny_task_data):
    data = tiny_task_data
    scores, selected = SELECTION_METHODS.get("same_task_success")(request(data, "same_task_success"))
    episodes = data.prior.episodes
    expected = [
        i
        for i, (t, s) in enumerate(zip(episodes.task, episodes.success, strict=True))
        if t == data.task and s
    ]
    assert expected and selected.tolist() == expected and set(scores[selected]) == {0.0}
    elsewhere = dataclasses.replace(data, task="metaworld/door-open")
    with pytest.raises(DatamilError, match="no successful 'metaworld/door-open' trajectory"):
        SELECTION_METHODS.get("same_task_success")(request(elsewhere, "same_task_success"))
    unlabelled = dataclasses.replace(data, prior=copy.copy(data.prior))
    unlabelled.prior.episodes = dataclasses.replace(episodes, success=[None] * len(episodes.success))
    with pytest.raises(DatamilError, match="needs success labels"):
        SELECTION_METHODS.get("same_task_success")(request(unlabelled, "same_task_success"))


def test_random_depends_on_the_seed_only(tiny_task_data):
    a, b = (SELECTION_METHODS.get("random")(request(tiny_task_data, "random", seed=s))[0] for s in (0, 1))
    assert not np.array_equal(a, b)


def test_unknown_options_fail_loudly(tiny_task_data):
    with pytest.raises(DatamilError, match="no option"):
        SELECTION_METHODS.get("strap")(request(tiny_task_data, "strap", segment_lenght=10))


def test_behavior_retrieval_is_deterministic_and_seeded(tiny_task_data):
    import torch

    torch.manual_seed(123)
    before = torch.rand(1)
    runs = [
        SELECTION_METHODS.get("behavior_retrieval")(request(tiny_task_data, "behavior_retrieval", seed=s))[0]
        for s in (0, 0, 1)
    ]
    np.testing.assert_array_equal(runs[0], runs[1])
    assert not np.array_equal(runs[0], runs[2])
    torch.manual_seed(123)
    assert torch.equal(before, torch.rand(1))  # the global torch RNG stream is left as it was


@pytest.mark.parametrize("name", BASELINES)
def test_every_baseline_has_a_method_preset(name):
    cfg = instantiate(OmegaConf.load(Path(CONFIG_DIR) / "method" / f"{name}.yaml"))
    assert isinstance(cfg, SelectionConfig) and cfg.method == name


# ------------------------------------------------------------------------------------ planted answers
def _store(trajectories: list[tuple[np.ndarray, np.ndarray]], prefix: str) -> TrajectoryStore:
    return TrajectoryStore.from_episodes(
        Episode(
            {"state": s.astype(np.float32)},
            a.astype(np.float32),
            EpisodeMeta(f"{prefix}{i}", "synthetic", "t"),
        )
        for i, (s, a) in enumerate(trajectories)
    )


def _walk(rng: np.random.Generator, length: int, center: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    state = center + np.cumsum(rng.normal(0, 0.2, (length, len(center))), axis=0)
    action = np.tanh(rng.normal(0, 1, (1, 3)) + 0.1 * rng.normal(0, 1, (length, 3)))
    return state, action


@pytest.fixture(scope="module")
def planted() -> tuple[TaskData, set[str]]:
    """20 unrelated prior trajectories (each around its own random center and action mode) plus noisy
    copies of the two target-train demos and of the target-val demo, planted at prior indices 5, 17 and 9."""
    rng = np.random.default_rng(0)
    targets = [_walk(rng, 40, rng.normal(0, 3, 6)) for _ in range(3)]
    prior = [_walk(rng, int(rng.integers(30, 60)), rng.normal(0, 3, 6)) for _ in range(20)]
    for at, source in ((5, targets[0]), (9, targets[2]), (17, targets[1])):
        prior.insert(at, tuple(x + rng.normal(0, 0.02, x.shape) for x in source))
    data = TaskData("t", _store(prior, "p"), _store(targets[:2], "tt"), _store(targets[2:], "tv"))
    return data, {"p5", "p9", "p17"}


RETRIEVAL = [
    "state_similarity",
    "action_similarity",
    "state_action_similarity",
    "behavior_retrieval",
    "strap",
]


@pytest.mark.parametrize("name", RETRIEVAL)
def test_retrieval_baselines_pick_planted_near_duplicates(name, planted):
    """Fairness too: p9 copies the target-val demo, so only a query with target-val finds all three."""
    data, duplicates = planted
    options = {"behavior_retrieval": {"steps": 400}, "strap": {"segment_length": 10, "stride": 10}}.get(
        name, {}
    )
    cfg = SelectionConfig(method=name, budget=3 / data.prior.n_episodes, options=options)
    _, chosen = SELECTION_METHODS.get(name)(SelectionRequest(data, cfg, 0, lambda a: None))
    assert {data.prior.episodes.episode_id[i] for i in chosen} == duplicates


def test_the_query_holds_target_train_and_target_val(planted):
    data, _ = planted
    query = query_demos(data)
    assert list(query.episodes.episode_id) == ["tt0", "tt1", "tv0"]
    assert query.n_steps == data.target_train.n_steps + data.target_val.n_steps


# ------------------------------------------------------------------------------------ DemInf
def _clean_and_random(rng: np.random.Generator, random_actions: bool) -> tuple[np.ndarray, np.ndarray]:
    """A 40-step demo whose action is a fixed function of the state, or the same walk with random actions."""
    state = np.cumsum(rng.normal(0, 0.3, (40, 4)), axis=0)
    weights = np.array([[0.9, -0.4, 0.3], [0.2, 0.8, -0.5], [-0.6, 0.1, 0.7], [0.3, 0.5, 0.4]])
    action = rng.uniform(-1, 1, (40, 3)) if random_actions else np.tanh(state @ weights)
    return state, action


@pytest.mark.parametrize("embedding", ["standardized", "vae"])
def test_deminf_prefers_clean_demos_to_random_actions(embedding):
    rng = np.random.default_rng(0)
    demos = [_clean_and_random(rng, random_actions=i in (2, 6)) for i in range(8)]
    data = TaskData("t", _store(demos, "p"), _store(demos[:1], "tt"), _store(demos[:1], "tv"))
    options = {"embedding": embedding, "steps": 150, "steps_per_trajectory": 20}
    cfg = SelectionConfig(method="deminf", budget=6 / 8, options=options)
    scores, chosen = SELECTION_METHODS.get("deminf")(SelectionRequest(data, cfg, 0, lambda a: None))
    assert set(np.argsort(scores)[-2:]) == {2, 6}  # the random-action demos score worst
    assert list(chosen) == [0, 1, 3, 4, 5, 7]


def test_ksg_matches_the_gaussian_mutual_information():
    """KSG on correlated Gaussians against I = -log(1 - rho^2) / 2, and near 0 for independent ones."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=3000)
    for rho in (0.0, 0.6, 0.9):
        y = rho * x + np.sqrt(1 - rho**2) * rng.normal(size=3000)
        assert ksg_contributions(x, y, 5).mean() == pytest.approx(-0.5 * np.log(1 - rho**2), abs=0.05)


def test_spread_steps_keeps_every_episode_end_to_end():
    steps = spread_steps(np.array([0, 3, 13, 113]), 4)
    np.testing.assert_array_equal(steps, [0, 1, 2, 3, 6, 9, 12, 13, 46, 79, 112])
    np.testing.assert_array_equal(spread_steps(np.array([0, 3, 5]), None), np.arange(5))


# ------------------------------------------------------------------------------------ DTW against brute force
def brute_force_subsequence_dtw(query: np.ndarray, ref: np.ndarray) -> float:
    """The textbook O(L T) double loop with free start and end in the reference."""
    cost = np.linalg.norm(query[:, None] - ref[None], axis=-1)
    acc = np.full(cost.shape, np.inf)
    acc[0] = cost[0]
    for i in range(1, len(query)):
        for j in range(len(ref)):
            best = acc[i - 1, j]
            if j > 0:
                best = min(best, acc[i - 1, j - 1], acc[i, j - 1])
            acc[i, j] = cost[i, j] + best
    return float(acc[-1].min())


def test_vectorized_subsequence_dtw_matches_brute_force():
    rng = np.random.default_rng(1)
    queries = rng.normal(size=(4, 5, 3))
    lengths = np.array([3, 9, 1, 7, 12])
    flat, offsets = rng.normal(size=(lengths.sum(), 3)), np.concatenate([[0], np.cumsum(lengths)])
    refs, _ = pad_episodes(flat, offsets)
    expected = np.array(
        [[brute_force_subsequence_dtw(q, r[:n]) for r, n in zip(refs, lengths, strict=True)] for q in queries]
    )
    np.testing.assert_allclose(subsequence_dtw(queries, refs, lengths), expected, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(
        dtw_costs(queries, flat, offsets, max_cells=50), expected, rtol=1e-9, atol=1e-9
    )


def test_dtw_finds_an_embedded_copy_at_zero_cost():
    rng = np.random.default_rng(2)
    ref = rng.normal(size=(1, 30, 2))
    query = ref[:, 11:19].copy()
    cost = subsequence_dtw(query, np.concatenate([ref, rng.normal(size=(1, 30, 2))]), np.array([30, 30]))
    assert cost[0, 0] == pytest.approx(0.0, abs=1e-6) and cost[0, 1] > 0.5


def test_sub_trajectories_cover_every_step():
    x = np.arange(23.0)[:, None]
    windows = sub_trajectories(x, np.array([0, 13, 23]), length=5, stride=5)
    assert windows.shape[1:] == (5, 1)
    np.testing.assert_array_equal(np.unique(windows), np.arange(23.0))
    assert windows[2, -1, 0] == 12 and windows[-1, -1, 0] == 22  # the last window ends at the episode end
    short = sub_trajectories(x[:3], np.array([0, 3]), length=5, stride=5)
    np.testing.assert_array_equal(short[0, :, 0], [0, 0, 0, 1, 2])


# ------------------------------------------------------------------------------------ the benchmark's method specs
@pytest.fixture(scope="module")
def bench():
    """benchmarks/selection_quality.py as a module (benchmarks/ holds scripts, not a package)."""
    return load_script(ROOT / "benchmarks" / "selection_quality.py")


def test_settings_added_later_leave_older_output_directories_resumable_at_their_neutral_value(bench):
    old = {"budget": 0.1, "data": {"name": "m"}, "estimator": {"proxy": {"batch_size": 256}}}
    new = {"budget": 0.1, "data": {"name": "m", "normalization": "none"}, "proxy_seeds": 1, "seeds": [0],
           "estimator": {"proxy": {"batch_size": 256, "target_share": 0.0}}}  # fmt: skip
    assert bench.resumable_settings(new) == old and "target_share" in new["estimator"]["proxy"]  # a copy
    changed = bench.resumable_settings(
        new | {"estimator": {"proxy": {"batch_size": 256, "target_share": 0.5}}}
    )
    assert changed["estimator"]["proxy"]["target_share"] == 0.5
    assert bench.resumable_settings(new | {"proxy_seeds": 3})["proxy_seeds"] == 3


def test_a_changed_method_preset_refuses_to_resume_an_output_directory(bench, tmp_path, monkeypatch):
    """refine's preset lives outside the benchmark config; when it changes, old runs must not be resumed
    into the new table. A settings.json written before presets were recorded still resumes."""
    from types import SimpleNamespace

    plan = SimpleNamespace(config={"budget": 0.1, "seeds": [0]}, out=tmp_path)
    (tmp_path / "settings.json").write_text(json.dumps({"budget": 0.1}, sort_keys=True))  # an older directory
    bench.check_resumable(plan)
    assert json.loads((tmp_path / "settings.json").read_text())["method_presets"] == bench.method_presets()
    bench.check_resumable(plan)  # the same presets: resumes
    presets = bench.method_presets()
    presets["refine"] = presets["refine"] | {"pool_share": 0.5}
    monkeypatch.setattr(bench, "method_presets", lambda: presets)
    with pytest.raises(DatamilError, match="other settings"):
        bench.check_resumable(plan)


def test_proxy_seeds_start_at_the_run_seed_and_never_reach_another_run_seed(bench):
    assert bench.proxy_seeds(2, 1) == [2]
    assert bench.proxy_seeds(2, 3) == [2, 1002, 2002]
    with pytest.raises(DatamilError, match="proxy_seeds=0"):
        bench.proxy_seeds(0, 0)


def test_method_specs_parse_and_fail_on_one_line(bench):
    def parse(name: str) -> tuple:
        spec = bench.parse_method(name)
        return spec.method, spec.estimator, spec.size_from

    assert parse("metagrad") == ("topk", "metagrad", None)
    assert parse("metagrad_threshold") == ("threshold", "metagrad", None)
    assert parse("state_action_similarity") == ("state_action_similarity", None, None)
    assert parse("random@metagrad_threshold") == ("random", None, "metagrad_threshold")
    fixed = bench.parse_method("action_similarity@0.02")  # a fixed share: a plain baseline at another size
    assert (fixed.method, fixed.size_from, fixed.share, fixed.baseline) == (
        "action_similarity",
        None,
        0.02,
        True,
    )
    assert bench.tables.compared_with(["metagrad", "action_similarity@0.02"], "metagrad") == [
        "action_similarity@0.02"
    ]
    assert bench.tables.label("action_similarity@0.02") == "action_similarity at 2% of the prior"
    for bad, message in [
        ("metagrad_sideways", "unknown method"),
        ("random@nothing", "unknown method"),
        ("all_prior@metagrad_threshold", "chooses its own size"),
        ("random@strap@metagrad", "one plain method"),
        ("random@0", "a share of the prior is in"),
        ("random@1.5", "a share of the prior is in"),
        ("all_prior@0.1", "takes no share"),
    ]:
        with pytest.raises(DatamilError, match=message):
            bench.parse_method(bad)
    with pytest.raises(DatamilError, match="estimator"):
        bench.check_methods(["random@truncated_threshold"], "metagrad")
    choice = bench.parse_method("metagrad_refine|random@metagrad_refine|all_prior")
    assert (
        choice.candidates == ("metagrad_refine", "random@metagrad_refine", "all_prior") and choice.self_sized
    )
    with pytest.raises(DatamilError, match=r"lacks \(all_prior\)"):
        bench.check_methods(["metagrad", "metagrad|all_prior"], "metagrad")
    with pytest.raises(DatamilError, match="unknown method 'nothing'"):
        bench.parse_method("metagrad|nothing")


def test_full_preset_declares_its_task_split_and_methods(bench):
    cfg = bench.load_config("full")
    dev, candidates = list(cfg.dev_tasks), list(cfg.test_candidates)
    assert len(dev) == 5 and len(candidates) >= 10 and not set(dev) & set(candidates)
    assert list(cfg.tasks) == list(cfg.test_tasks) and cfg.data.episodes_per_task == 165
    assert list(bench.load_config("full", ["tasks=${dev_tasks}"]).tasks) == dev
    bench.check_methods(list(cfg.methods), str(cfg.estimator_name))
    matched = [m for m in cfg.methods if "@" in m]
    assert len(matched) == 5 and all(m.endswith("@metagrad_threshold") for m in matched)
    assert len(cfg.test_tasks) == 5 and not set(cfg.test_tasks) & set(dev)
    with pytest.raises(DatamilError, match="--pilot"):  # before the pilot has picked them: one line
        bench.make_plan(bench.load_config("full", ["test_tasks=[]"]))
    with pytest.raises(DatamilError, match="test_candidates"):
        bench.run_pilot(bench.load_config("tiny"))


def test_every_benchmark_preset_composes_and_its_committed_runs_are_its_own(bench):
    """Each preset resumes from its committed runs.csv: those rows must be runs the preset itself names
    (its tasks and methods), or a fresh checkout would take over runs made for another table. A preset that
    takes over another directory's runs (a development round reusing a reported one) must name their tasks,
    and it reads only the methods it lists."""
    presets = sorted(p.stem for p in (Path(bench.CONFIG_DIR) / "benchmark").glob("*.yaml"))
    assert {"default", "full", "full_hard", "full_hard_2d", "full_hard_2d_replica"} <= set(presets)
    for name in presets:
        cfg = bench.load_config(name)
        bench.check_methods(list(cfg.methods), str(cfg.estimator_name))
        paths = cfg.get("resume_from") or []
        for path in [paths] if isinstance(paths, str) else list(paths):
            resume = ROOT / str(path)
            if not resume.is_file() or not cfg.tasks:
                continue
            runs = {(r["task"], r["method"]) for r in csv.DictReader(resume.open(newline=""))}
            own = resume.parent.name == Path(cfg.output_dir).name
            foreign = {(t, m) for t, m in runs if t not in cfg.tasks or (own and m not in cfg.methods)}
            assert not foreign, f"{name}: {sorted(foreign)[:3]} in {resume} are not runs of this preset"


def test_size_matched_runs_take_the_reference_count_and_share_scores(bench, planted, tmp_path):
    """`random@metagrad_threshold` keeps as many trajectories as the threshold chose for the same (task,
    seed), and every datamodel method of that (task, seed) reads one estimate."""
    data, _ = planted
    calls = []

    def estimate(policy, prior, target_val, rng_seed, target_train_store):  # helpful: the first 7 episodes
        calls.append(rng_seed)
        return np.where(prior.episode_of_step < 7, -1.0, 1.0) + 1e-3 * prior.episode_of_step

    plan = bench.Plan(
        tasks=["t"], methods=[], seeds=[0], budget=0.25, options={}, data=None, policy=None,
        proxy=functools.partial(MLPPolicy, hidden=(8,)), estimator=estimate, estimator_name="metagrad",
        cotrain={}, optim=None, eval={}, out=tmp_path, config={"estimator": {}, "proxy": {}, "proxy_seeds": 1},
    )  # fmt: skip
    picked = {m: bench.select(plan, data, m, 0)[0].selected for m in
              ["random@metagrad_threshold", "metagrad", "metagrad@metagrad_threshold", "random"]}  # fmt: skip
    threshold = read_selection(
        tmp_path / "selections" / "t" / "metagrad_threshold" / "seed0" / "selection.json"
    )
    assert threshold.selected == [f"p{i}" for i in range(7)] and threshold.budget is None
    assert len(picked["random@metagrad_threshold"]) == 7 and len(picked["random"]) == round(0.25 * 23)
    assert picked["metagrad@metagrad_threshold"] == threshold.selected
    assert calls == [0]  # one estimate for threshold, top-k and size-matched top-k
    for m in ("metagrad", "metagrad_threshold", "metagrad@metagrad_threshold"):
        scores = tmp_path / "selections" / "t" / m / "seed0" / "scores"
        assert scores.is_symlink() and scores.resolve() == (tmp_path / "scores" / "t" / "metagrad").resolve()


# ------------------------------------------------------------------------------------ the benchmark, end to end
@pytest.mark.slow
@pytest.mark.sim
def test_tiny_selection_quality_benchmark(bench, tmp_path):
    overrides = [f"output_dir={tmp_path / 'out'}", f"data.cache_dir={tmp_path / 'cache'}", "data.workers=1"]
    rows = bench.main(["--preset", "tiny", *overrides])
    methods = list(bench.load_config("tiny").methods)
    assert sorted(r["method"] for r in rows) == sorted(methods)
    assert all(0.0 <= r["success_rate"] <= 1.0 and np.isfinite(r["surrogate_loss"]) for r in rows)
    for name in ("runs.csv", "results.md", "success.png", "config.yaml"):
        assert (tmp_path / "out" / name).is_file()
    table = (tmp_path / "out" / "results.md").read_text()
    assert all(f"| {bench.tables.label(m)} |" in table for m in methods) and "Spearman" in table
    again = bench.main(["--preset", "tiny", *overrides])  # resumes: every run is read back, not re-run
    assert [r["success_rate"] for r in again] == [r["success_rate"] for r in rows]
    # another process (or launcher job) adds a seed to the same directory: one table over every finished run
    gathered = bench.main(["--preset", "tiny", *overrides, "methods=[target_only]", "seeds=[1]"])
    assert len(gathered) == len(rows) + 1 and {r["seed"] for r in gathered} == {0, 1}
    assert len(bench.tables.read_rows(tmp_path / "out" / "runs.csv")) == len(rows) + 1
    # a choice trains nothing of its own: it keeps the finished candidate with the lower co-trained surrogate
    chose = bench.main(["--preset", "tiny", *overrides, "methods=[metagrad,all_prior,'metagrad|all_prior']"])
    (choice,) = [r for r in chose if r["method"] == "metagrad|all_prior"]
    kept = min(
        (r for r in rows if r["method"] in ("metagrad", "all_prior")), key=lambda r: r["surrogate_loss"]
    )
    assert choice["chosen"] == kept["method"] and choice["success_rate"] == kept["success_rate"]
    pilot = [
        "+test_candidates=[metaworld/reach,metaworld/push]",
        "+pilot.max_success=1.01",
        "+pilot.n_test_tasks=1",
    ]
    (picked,) = bench.main(["--preset", "tiny", "--pilot", *overrides, *pilot])  # push cannot change the pick
    assert not (tmp_path / "out" / "pilot" / "runs" / "metaworld__push").exists()
    assert picked["seed"] == 100 and picked["test_task"] == "yes"  # its own seed: benchmark runs stay fresh
    assert "test_tasks: [metaworld/reach]" in (tmp_path / "out" / "pilot" / "pilot.md").read_text()
    assert (tmp_path / "out" / "pilot" / "pilot.csv").is_file()
    assert (tmp_path / "out" / "composition.csv").is_file()
    with pytest.raises(DatamilError, match="pilot.seed"):
        bench.main(["--preset", "tiny", "--pilot", *overrides, *pilot, "+pilot.seed=0"])
    # a retrieval baseline as the pilot, at its own budget and on its own draw of the data
    own = ["+pilot.method=action_similarity", "+pilot.budget=0.25", "+pilot.data_seed=3"]
    own_dir = [o for o in overrides if not o.startswith("output_dir=")] + [f"output_dir={tmp_path / 'own'}"]
    (picked,) = bench.main(["--preset", "tiny", "--pilot", *own_dir, *pilot, *own])
    assert picked["method"] == "action_similarity" and picked["budget"] == 0.25
    assert picked["n_selected"] == picked["budget_count"] == round(0.25 * picked["n_prior"])
    assert OmegaConf.load(tmp_path / "own" / "pilot" / "config.yaml").data.seed == 3


def test_committed_runs_resume_a_fresh_checkout(bench, tmp_path):
    """A runs.csv (and composition.csv) committed by an earlier session is read back as finished runs."""
    row = {"task": "metaworld/reach", "method": "random", "seed": 0, "success_rate": 0.5, "n_episodes": 50,
           "surrogate_loss": 0.1, "n_prior": 12, "n_selected": 3, "size_from": ""}  # fmt: skip
    bench.tables.write_csv([row], tmp_path / "runs.csv")
    (tmp_path / "composition.csv").write_text(
        "task,method,seed,source_task,n_selected,n_success\nmetaworld/reach,random,0,metaworld/push,3,2\n"
    )
    committed = bench.committed_rows(str(tmp_path / "runs.csv"))
    back = committed[("metaworld/reach", "random", 0)]
    assert back["success_rate"] == 0.5 and back["n_selected"] == 3 and "size_from" not in back
    assert back["composition"] == {"metaworld/push": [3, 2]}
    assert bench.committed_rows(str(tmp_path / "missing.csv")) == {} and bench.committed_rows(None) == {}
    # several committed directories add up, the later one winning a shared (task, method, seed)
    later = tmp_path / "later"
    bench.tables.write_csv([row | {"success_rate": 0.7}, row | {"method": "all_prior"}], later / "runs.csv")
    both = bench.committed_rows([str(tmp_path / "runs.csv"), str(later / "runs.csv")])
    assert both[("metaworld/reach", "random", 0)]["success_rate"] == 0.7 and len(both) == 2


def test_rerun_leaves_a_methods_committed_runs_behind(bench, tmp_path):
    """`rerun=[m]`: after m's preset changed, its committed runs are run afresh; the others are taken over."""
    row = {"task": "metaworld/reach", "seed": 0, "success_rate": 0.5, "n_episodes": 50, "surrogate_loss": 0.1,
           "n_prior": 12, "n_selected": 3}  # fmt: skip
    bench.tables.write_csv(
        [row | {"method": "random"}, row | {"method": "target_only"}], tmp_path / "runs.csv"
    )
    overrides = [f"+resume_from={tmp_path / 'runs.csv'}", f"output_dir={tmp_path / 'out'}"]
    both = bench.make_plan(bench.load_config("tiny", overrides)).committed
    assert {method for _, method, _ in both} == {"random", "target_only"}
    kept = bench.make_plan(bench.load_config("tiny", [*overrides, "rerun=[random]"])).committed
    assert {method for _, method, _ in kept} == {"target_only"}

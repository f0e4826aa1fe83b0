"""Scripted-expert data: determinism across workers, success flags, noise, truncation, target demos."""

from __future__ import annotations

import numpy as np
import pytest

from datamil.data.schema import OBS_STATE, Episode
from datamil.errors import DatamilError
from datamil.sim_tasks.generate import generate_episodes, generate_target_demos, split_target

pytestmark = pytest.mark.sim

TASKS = ["metaworld/reach", "metaworld/pick-place-wall"]
SETTINGS = dict(seed=0, noise_levels=(0.1, 0.5, 1.0), max_steps=150, progress=False)


@pytest.fixture(scope="module")
def prior() -> list[Episode]:
    return generate_episodes(TASKS, 6, workers=1, **SETTINGS)


def _same(a: Episode, b: Episode) -> bool:
    return (
        a.meta == b.meta
        and np.array_equal(a.actions, b.actions)
        and np.array_equal(a.observations[OBS_STATE], b.observations[OBS_STATE])
        and np.array_equal(a.rewards, b.rewards)
    )


def test_generation_is_the_same_with_two_workers(prior: list[Episode]) -> None:
    again = generate_episodes(TASKS, 6, workers=2, **SETTINGS)
    assert len(again) == len(prior) == 12
    assert all(_same(a, b) for a, b in zip(prior, again, strict=True))


def test_episode_layout_and_metadata(prior: list[Episode]) -> None:
    ids = [ep.meta.episode_id for ep in prior]
    assert (
        len(set(ids)) == len(ids)
        and ids[0] == "metaworld/reach/s0/0"
        and ids[-1] == "metaworld/pick-place-wall/s0/5"
    )
    for i, ep in enumerate(prior):
        ep.validate(action_dim=4)
        assert ep.meta.dataset == "metaworld" and ep.meta.task == TASKS[i // 6]
        assert ep.language_instruction == TASKS[i // 6].split("/")[1].replace("-", " ")
        assert (
            ep.observations[OBS_STATE].shape == (len(ep), 39)
            and ep.observations[OBS_STATE].dtype == np.float32
        )
        assert ep.actions.dtype == np.float32 and np.all(np.abs(ep.actions) <= 1)
        assert ep.meta.success == bool(ep.extras["success"].any())
        assert {k: v.shape[0] for k, v in ep.extras.items()} == dict.fromkeys(
            ("success", "expert_action", "noise_level", "perturbed", "cut"), len(ep)
        )
        assert ep.extras["noise_level"][0] == SETTINGS["noise_levels"][i % 6 % 3]
        assert len(ep) <= SETTINGS["max_steps"]
        assert not ep.is_terminal[:-1].any() and ep.is_terminal[-1] <= ep.meta.success


def test_noise_produces_failures_on_a_hard_task(prior: list[Episode]) -> None:
    hard = [ep for ep in prior if ep.meta.task == "metaworld/pick-place-wall"]
    assert any(ep.meta.success for ep in hard) and not all(ep.meta.success for ep in hard)
    assert any(ep.meta.success for ep in hard if ep.extras["noise_level"][0] == 0.1)


def test_truncation_keeps_a_prefix_and_perturbation_changes_actions() -> None:
    base = dict(seed=3, noise_levels=(0.0,), max_steps=150, workers=1, progress=False)
    full = generate_episodes(["metaworld/reach"], 3, truncate_prob=0.0, perturb_prob=0.0, **base)
    cut = generate_episodes(["metaworld/reach"], 3, truncate_prob=1.0, perturb_prob=0.0, **base)
    for whole, part in zip(full, cut, strict=True):
        assert np.array_equal(whole.actions, whole.extras["expert_action"])  # no noise, no perturbation
        assert len(part) <= 0.8 * len(whole) and np.array_equal(part.actions, whole.actions[: len(part)])
        assert part.extras["cut"].all() and not whole.extras["cut"].any()
    shaken = generate_episodes(
        ["metaworld/reach"],
        3,
        truncate_prob=0.0,
        perturb_prob=1.0,
        max_steps=150,
        seed=3,
        noise_levels=(0.0,),
        workers=1,
        progress=False,
    )
    assert any(ep.extras["perturbed"].any() for ep in shaken)
    for ep in shaken:  # without noise, actions leave the expert's exactly where a burst acts
        differs = np.any(ep.actions != ep.extras["expert_action"], axis=1)
        assert not (differs & ~ep.extras["perturbed"]).any()


def test_target_demos_succeed_and_split_disjointly(prior: list[Episode]) -> None:
    demos = generate_target_demos("metaworld/pick-place-wall", 5, seed=0, max_steps=200)
    assert len(demos) == 5 and all(ep.meta.success for ep in demos)
    ids = {ep.meta.episode_id for ep in demos}
    assert len(ids) == 5 and not ids & {ep.meta.episode_id for ep in prior}
    train, val = split_target(demos, n_val=2, seed=0)
    train_ids, val_ids = {ep.meta.episode_id for ep in train}, {ep.meta.episode_id for ep in val}
    assert len(val) == 2 and len(train) == 3 and not train_ids & val_ids and train_ids | val_ids == ids
    again = split_target(demos, n_val=2, seed=0)
    assert [ep.meta.episode_id for ep in again[1]] == [ep.meta.episode_id for ep in val]
    with pytest.raises(DatamilError):
        split_target(demos, n_val=6, seed=0)


def test_target_demos_fail_loudly_when_the_expert_cannot_succeed() -> None:
    with pytest.raises(
        DatamilError, match="target demos of 'metaworld/pick-place-wall' succeeded in 3 attempts"
    ):
        generate_target_demos("metaworld/pick-place-wall", 2, seed=0, max_steps=3, max_attempts=3)


def test_a_prior_without_the_target_is_the_shared_prior_less_its_episodes(tmp_path) -> None:
    """target_in_prior=false reads the one cache of the prior with the target and drops the target's episodes:
    the same episodes and statistics as generating the other tasks alone, and one cache for every target."""
    from dataclasses import asdict

    from conftest import tiny_source

    small = dict(episodes_per_task=2, max_steps=40, n_target_demos=3, n_target_val=1)
    source = tiny_source(str(tmp_path / "cache"), target_in_prior=False, **small)
    for target in ("metaworld/reach", "metaworld/push"):
        prior = source.load(target).prior
        assert target not in set(prior.episodes.task) and prior.n_episodes == 4
    assert len(list((tmp_path / "cache" / "metaworld").glob("prior-*"))) == 1  # generated once, for both
    without = source._prior("metaworld/reach", tmp_path / "cache")
    alone = source._generated_prior(["metaworld/button-press", "metaworld/push"], tmp_path / "alone")
    assert without.episodes.episode_id == alone.episodes.episode_id
    assert all(np.array_equal(without.arrays[name], alone.arrays[name]) for name in alone.arrays)
    for name, stats in alone.stats["metaworld"].items():
        ours = asdict(without.stats["metaworld"][name])
        assert all(np.allclose(ours[k], v) for k, v in asdict(stats).items()), name

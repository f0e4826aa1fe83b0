"""Evaluation renders only what it needs: nothing for state policies unless a video is asked for, the
policy's own views (at its size) for image policies; torch leaves the cores to the render workers."""

from __future__ import annotations

import functools
import sys

import numpy as np
import pytest
import torch

import datamil.evaluate
from datamil.checkpoint import save_policy
from datamil.policies import POLICIES
from datamil.policies.vision import VisionPolicy
from datamil.sim_tasks import rollout
from datamil.sim_tasks.evaluation import evaluate_checkpoint
from datamil.sim_tasks.render import FrameRenderer
from datamil.sim_tasks.rollout import cores_left_to_workers, evaluate_policy, policy_cameras, usable_cores

pytestmark = pytest.mark.sim

TASK = "metaworld/reach"
SIZE = 32
TINY_IMAGE = dict(
    channels=(8, 8), strides=(2, 1), keypoints=4, feature_dim=8, hidden=(16, 16), image_size=(SIZE, SIZE)
)


@pytest.fixture
def no_renderer(monkeypatch) -> None:
    """Creating a renderer in this process fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError("evaluation created a renderer")

    monkeypatch.setattr(FrameRenderer, "__init__", refuse)


@pytest.fixture
def pool_cameras(monkeypatch) -> list:
    """The `cameras` of every env pool evaluate_policy builds (what its workers render, if anything)."""
    seen: list = []
    make_pool = rollout.make_pool

    def spy(*args, **kwargs):
        seen.append(args[6] if len(args) > 6 else kwargs.get("cameras"))
        return make_pool(*args, **kwargs)

    monkeypatch.setattr(rollout, "make_pool", spy)
    return seen


@pytest.fixture(scope="module")
def state_checkpoint(tmp_path_factory):
    policy = POLICIES.get("bc_mlp")(39, 4, hidden=(16,))
    return save_policy(tmp_path_factory.mktemp("state") / "policy.pt", policy, task=TASK)


def test_state_policies_never_render(no_renderer, pool_cameras) -> None:
    mlp = POLICIES.get("bc_mlp")(39, 4, hidden=(16,))
    state_only_image_policy = VisionPolicy(39, 4, image_keys=(), **TINY_IMAGE)  # reads no camera
    for policy, workers in ((mlp, 1), (mlp, 2), (state_only_image_policy, 1)):
        result = evaluate_policy(
            functools.partial(policy.act, None), TASK, 2, 0, 4, n_envs=2, workers=workers
        )
        assert result.n_episodes == 2 and "cameras" not in result.settings
    assert pool_cameras == [None, None, None]


def test_evaluate_cli_without_video_opens_no_gl(state_checkpoint, tmp_path, monkeypatch, no_renderer) -> None:
    """`python -m datamil.evaluate` with video_episodes=0: no GL probe, no renderer, no video process."""

    def refuse(*args, **kwargs):
        raise AssertionError("GL or video work without a video request")

    monkeypatch.setattr(datamil.evaluate, "keep_physics_without_gl", refuse)
    monkeypatch.setattr(datamil.evaluate, "record_evaluation_video", refuse)
    run_dir = tmp_path / "run"
    overrides = [f"checkpoint={state_checkpoint}", "eval.n_episodes=2", "eval.max_steps=4"]
    monkeypatch.setattr(sys, "argv", ["evaluate", *overrides, f"hydra.run.dir={run_dir}"])
    datamil.evaluate.main()
    assert (run_dir / "results.json").is_file() and not (run_dir / "videos").exists()


def test_image_policy_gets_its_own_views_and_torch_leaves_cores_to_the_workers(tmp_path, monkeypatch) -> None:
    policy = VisionPolicy(
        39, 4, image_keys=("image_primary",), cameras={"image_primary": "corner"}, **TINY_IMAGE
    )
    checkpoint = save_policy(tmp_path / "policy.pt", policy, task=TASK)
    seen: list[tuple[dict, int]] = []
    act = VisionPolicy.act

    def spy(self, params, obs):
        seen.append(
            ({k: (v.shape, v.dtype, float(np.std(v))) for k, v in obs.items()}, torch.get_num_threads())
        )
        return act(self, params, obs)

    monkeypatch.setattr(VisionPolicy, "act", spy)
    before = torch.get_num_threads()
    torch.set_num_threads(max(before, usable_cores()))
    try:
        threads = torch.get_num_threads()
        result = evaluate_checkpoint(
            checkpoint, n_episodes=2, max_steps=3, n_envs=2, workers=1, progress=False
        )
        assert torch.get_num_threads() == threads  # restored after the rollout
    finally:
        torch.set_num_threads(before)
    assert result.settings["cameras"] == {
        "cameras": {"image_primary": "corner"},
        "size": [SIZE, SIZE],
        "fast": True,
        "samples": 0,
    }
    assert len(seen) == 3  # one batched call per step for both envs
    for obs, inside in seen:
        assert set(obs) == {"state", "image_primary"}
        shape, dtype, spread = obs["image_primary"]
        assert shape == (2, SIZE, SIZE, 3) and dtype == np.uint8 and spread > 5  # a picture, not a blank
        assert inside == min(threads, max(1, usable_cores() - 1))  # one render worker


def test_thread_cap_leaves_in_process_evaluation_alone() -> None:
    threads = torch.get_num_threads()
    with cores_left_to_workers(0):
        assert torch.get_num_threads() == threads
    with cores_left_to_workers(10_000):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == threads


def test_evaluation_renders_as_the_training_data_was_rendered() -> None:
    """The policy keeps the data's scene flags and multisampling, so evaluation frames look alike."""
    policy = VisionPolicy(
        39,
        4,
        image_keys=("image_primary",),
        cameras={"image_primary": "corner"},
        render={"fast": False, "samples": 4},
        **TINY_IMAGE,
    )
    config = policy_cameras(policy.act)
    assert (config.fast, config.samples, config.keys) == (False, 4, ["image_primary"])

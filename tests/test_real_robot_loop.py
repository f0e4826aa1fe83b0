"""The whole deployment loop against SimArm through a real policy server process on localhost, and its faults.

Scripted teleop (the MetaWorld expert as the operator) records demos to RLDS; they are read back, a BC
policy is trained on them, served by `python -m datamil.real_robot.serve`, and run on SimArm with its success
recorded. Faults: the server killed mid-episode, a policy that emits NaN or wrong-shaped actions, and a
client reconnecting to a restarted server.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch

from datamil.checkpoint import save_policy
from datamil.data.store import TrajectoryStore
from datamil.policies import POLICIES
from datamil.real_robot.chunking import PolicySource
from datamil.real_robot.client import PolicyClient
from datamil.real_robot.control import LoopConfig, run_episode
from datamil.real_robot.localhost import ServerProcess
from datamil.real_robot.operators import ScriptedOperator
from datamil.real_robot.recording import SessionInfo, SessionRecorder, merge_session, session_episodes
from datamil.real_robot.robot import EE_POSE
from datamil.real_robot.safety import Intervention, SafetyLayer, SafetyLimits
from datamil.real_robot.session import make_labeler, run_session
from datamil.real_robot.sim_arm import SIM_ACTION_SPACE, SimArm
from datamil.training import OptimConfig, train

pytestmark = [pytest.mark.sim, pytest.mark.filterwarnings("ignore::UserWarning")]

TASK = "metaworld/reach"
TARGET_STREAM = 2  # datamil.sim_tasks.STREAM_TARGET: demo layouts differ from evaluation layouts
N_DEMOS = 5


def limits(**overrides) -> SafetyLimits:
    base = dict(
        workspace_low=(-0.45, 0.38, 0.05), workspace_high=(0.45, 0.95, 0.45), gripper_range=(-1.0, 1.0)
    )
    return SafetyLimits(**{**base, **overrides})


@pytest.fixture(scope="module")
def demos(tmp_path_factory):
    """A teleop session: the scripted operator records N_DEMOS demos through the recorder."""
    root = tmp_path_factory.mktemp("teleop") / "session"
    info = SessionInfo(
        dataset="sim_demos", task=TASK, instruction="reach", robot="SimArm", operator="scripted"
    )
    recorder = SessionRecorder(root, info)
    loop = LoopConfig(rate_hz=400, max_steps=80, end_on_success=True)
    arm, safety = SimArm(TASK, seed=0, stream=TARGET_STREAM), SafetyLayer(limits(), SIM_ACTION_SPACE)
    summary = run_session(arm, ScriptedOperator(TASK), safety, recorder, loop, N_DEMOS, make_labeler("sim"))
    return root, summary


@pytest.fixture(scope="module")
def checkpoint(demos, tmp_path_factory):
    """A BC MLP trained on the recorded demos, read back from RLDS."""
    episodes = [episode for episode, _ in session_episodes(demos[0])]
    store = TrajectoryStore.from_episodes(episodes)
    stats = store.stats["sim_demos"]["obs/state"]
    policy = POLICIES.get("bc_mlp")(39, 4, hidden=(64, 64), state_stats=stats)
    cfg = OptimConfig(lr=3e-3, warmup_steps=10, total_steps=150)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny MLP: one thread is fastest, and the machine is shared
    try:
        train(policy, store, np.arange(store.n_steps), 150, 64, cfg, seed=0, progress=False)
    finally:
        torch.set_num_threads(threads)
    return save_policy(tmp_path_factory.mktemp("ckpt") / "bc.pt", policy, task=TASK, step=150)


def test_scripted_teleop_demos_are_recorded_as_rlds(demos, tmp_path):
    root, summary = demos
    read = list(session_episodes(root))
    assert len(read) == N_DEMOS and all(summary.labels)
    for (episode, record), result in zip(read, summary.results, strict=True):
        assert (
            episode.meta.success is True and episode.meta.dataset == "sim_demos" and episode.meta.task == TASK
        )
        assert episode.observations["state"].shape == (result.steps, 39) and episode.actions.shape == (
            result.steps,
            4,
        )
        assert record["operator"] == "scripted" and record["checkpoint_id"] is None and not record["partial"]
        assert np.all(np.diff(record["timestamp"]) > 0) and record["intervention"].shape == (result.steps,)
        np.testing.assert_allclose(record["proposed"], episode.actions, atol=1e-6)  # nothing clamped
    from datamil.data.rlds import read_rlds

    merged = merge_session([root], tmp_path, "sim_demos")
    assert [e.meta.episode_id for e in read_rlds(merged, progress=False)] == [
        e.meta.episode_id for e, _ in read
    ]


def test_policy_trained_on_demos_is_served_run_and_recorded(checkpoint, tmp_path):
    info = SessionInfo(dataset="sim_rollouts", task=TASK, robot="SimArm", operator="policy")
    recorder = SessionRecorder(tmp_path / "rollouts", info)
    loop = LoopConfig(rate_hz=60, max_steps=60, end_on_success=True)
    with ServerProcess(checkpoint) as server:
        client = PolicyClient(server.url)
        assert client.connect(wait_s=10)
        safety = SafetyLayer(limits(), SIM_ACTION_SPACE)
        summary = run_session(SimArm(TASK, seed=1), PolicySource(client), safety, recorder, loop, 2,
                              make_labeler("sim"), label_source="sim")  # fmt: skip
        client.close()
    rollouts = list(session_episodes(tmp_path / "rollouts"))
    assert len(rollouts) == 2
    for (episode, record), result in zip(rollouts, summary.results, strict=True):
        assert record["checkpoint_id"] == client.meta["checkpoint_id"] and client.meta["policy"] == "bc_mlp"
        assert episode.meta.success == result.success_signal == record["success"]
        assert record["label_source"] == "sim" and record["end_reason"] in ("success", "max_steps")
        assert record["timing"]["hz"] > 40 and "hold_no_action" not in record["interventions"]


def test_server_killed_mid_episode_watchdog_stops_then_client_reconnects(checkpoint):
    server = ServerProcess(checkpoint).start()
    client = PolicyClient(server.url, connect_timeout=0.2)
    assert client.connect(wait_s=10)
    arm = SimArm(TASK, seed=2)
    arm.connect()
    arm.home()
    safety = SafetyLayer(limits(watchdog_deadline_s=0.1, watchdog_stop_s=0.5), SIM_ACTION_SPACE)
    steps, killed = [], []

    def on_step(record) -> None:
        steps.append((time.monotonic(), record))
        if len(steps) == 10:
            server.kill()
            killed.append(time.monotonic())

    try:
        result = run_episode(arm, PolicySource(client), safety, LoopConfig(rate_hz=30, max_steps=300),
                             threading.Event(), on_step)  # fmt: skip
        assert result.end_reason == "watchdog" and result.interventions["stop_watchdog"] == 1
        assert steps[-1][0] - killed[0] < 0.5 + 0.4  # stop_s, plus a step and scheduling slack
        after = [record for _, record in steps[10:]]
        assert after and all(r.flags & Intervention.HOLD_NO_ACTION for r in after)
        held = np.asarray([r.obs[EE_POSE] for r in after])
        assert np.abs(held[-1] - held[-2]).max() < 1e-3  # holding: no new motion commanded
        assert np.abs(held - held[0]).max() < 0.05  # the hand only settles onto MetaWorld's mocap target

        server = ServerProcess(checkpoint, port=server.port).start()  # restarted on the same port
        source = PolicySource(client)
        source.reset(1)
        safety.reset()
        again = run_episode(arm, source, safety, LoopConfig(rate_hz=30, max_steps=10), threading.Event())
        assert client.reconnects == 1 and again.end_reason == "max_steps"
        assert "hold_no_action" not in again.interventions
    finally:
        client.close()
        server.stop()
        arm.close()


@pytest.mark.parametrize("fault", ["nan", "wrong_shape"])
def test_served_policy_emitting_bad_actions_is_rejected_and_counted(fault, tmp_path):
    policy = POLICIES.get("bc_mlp")(39, 7 if fault == "wrong_shape" else 4, hidden=(16,))
    if fault == "nan":
        with torch.no_grad():
            for p in policy.parameters():
                p.fill_(float("nan"))
    checkpoint = save_policy(tmp_path / f"{fault}.pt", policy, task=TASK)
    arm = SimArm(TASK, seed=3)
    arm.connect()
    start = arm.home()[EE_POSE].copy()
    safety = SafetyLayer(limits(), SIM_ACTION_SPACE)
    with ServerProcess(checkpoint) as server:
        client = PolicyClient(server.url)
        assert client.connect(wait_s=10)
        result = run_episode(arm, PolicySource(client), safety, LoopConfig(rate_hz=100, max_steps=10),
                             threading.Event())  # fmt: skip
        client.close()
    expected = "reject_nonfinite" if fault == "nan" else "reject_shape"
    assert result.interventions == {expected: 10}
    assert np.abs(arm.observe()[EE_POSE] - start).max() < 6e-3  # never applied (the hand settles by ~3 mm)
    arm.close()

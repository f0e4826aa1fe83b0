"""datamil.real_robot pieces on their own: wire format, safety layer, chunking, SimArm, teleop keys, configs.

Everything runs for real (MuJoCo SimArm, Hydra config composition); no server process here.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from datamil.cli import CONFIG_DIR
from datamil.errors import DatamilError
from datamil.real_robot.chunking import ChunkExecutor, TemporalEnsembler
from datamil.real_robot.control import LoopConfig, run_episode
from datamil.real_robot.keys import KeyEvents
from datamil.real_robot.operators import KeyboardOperator, ScriptedOperator
from datamil.real_robot.robot import EE_POSE, ActionSpace
from datamil.real_robot.safety import JOINTS, Intervention, SafetyLayer, SafetyLimits, Watchdog
from datamil.real_robot.sim_arm import SIM_ACTION_SPACE, SimArm, from_common, to_common
from datamil.real_robot.wire import pack, unpack

TASK = "metaworld/reach"
SIM_LIMITS = SafetyLimits(
    workspace_low=(-0.45, 0.38, 0.05), workspace_high=(0.45, 0.95, 0.45), gripper_range=(-1.0, 1.0)
)
CONFIGS = Path(CONFIG_DIR)


@pytest.fixture(scope="module")
def arm() -> SimArm:
    arm = SimArm(TASK, seed=0)
    arm.connect()
    yield arm
    arm.close()


# ---------------------------------------------------------------- wire
def test_wire_round_trips_numpy_and_refuses_objects():
    message = {"type": "x", "a": np.arange(6, dtype=np.float32).reshape(2, 3), "n": np.int64(3), "s": "hi"}
    back = unpack(pack(message))
    assert back["a"].dtype == np.float32 and back["a"].shape == (2, 3)
    np.testing.assert_array_equal(back["a"], message["a"])
    assert back["n"] == 3 and back["s"] == "hi"
    with pytest.raises(DatamilError):
        pack({"type": "x", "a": np.array([object()])})
    with pytest.raises(DatamilError):
        unpack(pack({"no": "type"}))


# ---------------------------------------------------------------- safety
def obs_at(pos, gripper: float = 1.0) -> dict:
    return {EE_POSE: np.asarray(pos, float), "state": np.zeros(39, np.float32), "gripper": gripper}


@pytest.mark.parametrize(
    ("action", "flag"),
    [
        (np.array([np.nan, 0, 0, 0]), Intervention.REJECT_NONFINITE),
        (np.array([np.inf, 0, 0, 0]), Intervention.REJECT_NONFINITE),
        (np.zeros(7), Intervention.REJECT_SHAPE),
        (np.zeros((2, 4)), Intervention.REJECT_SHAPE),
        ("not an action", Intervention.REJECT_SHAPE),
        (np.array([1e6, 0, 0, 0]), Intervention.REJECT_MAGNITUDE),
    ],
)
def test_bad_actions_are_rejected_and_hold(action, flag):
    safety = SafetyLayer(SIM_LIMITS, SIM_ACTION_SPACE)
    decision = safety.check(action, obs_at([0.0, 0.6, 0.2]))
    assert decision.flags == flag
    np.testing.assert_array_equal(decision.action, [0, 0, 0, SIM_ACTION_SPACE.gripper_open])


def test_limits_clamp_translation_workspace_and_gripper():
    safety = SafetyLayer(SIM_LIMITS, SIM_ACTION_SPACE)
    fast = safety.check(np.array([5.0, 0, 0, 3.0]), obs_at([0.0, 0.6, 0.2]))
    assert fast.flags == Intervention.CLAMP_TRANSLATION | Intervention.CLAMP_GRIPPER
    np.testing.assert_allclose(fast.action, [2.0, 0, 0, 1.0])  # 0.02 m at 0.01 m per unit
    edge = safety.check(np.array([0, 0, -1.0, 0]), obs_at([0.0, 0.6, 0.055]))
    assert edge.flags == Intervention.CLAMP_WORKSPACE
    np.testing.assert_allclose(edge.action[2], -0.5)  # only down to workspace_low z = 0.05
    assert safety.check(np.array([0.3, -0.2, 0.1, 0.5]), obs_at([0.0, 0.6, 0.2])).flags == 0
    held = safety.hold(obs_at([0.0, 0.6, 0.2]))
    assert held[3] == 0.5  # a hold keeps the last gripper command


def test_absolute_and_joint_modes():
    absolute = ActionSpace(dim=7, mode="absolute", translation=(0, 3), rotation=(3, 6), gripper=6)
    safety = SafetyLayer(SafetyLimits(max_translation=0.01, max_rotation=0.1), absolute)
    obs = {EE_POSE: np.array([0.5, 0.0, 0.3, 0.0, 0.0, 3.1])}
    decision = safety.check(np.array([0.6, 0.0, 0.3, 0.0, 0.0, -3.1, 0.5]), obs)
    assert decision.flags == Intervention.CLAMP_TRANSLATION  # +0.083 rad across the wrap is allowed
    np.testing.assert_allclose(decision.action[:3], [0.51, 0.0, 0.3])
    joint = ActionSpace(dim=3, mode="joint", translation=None, rotation=(0, 2), gripper=2)
    safety = SafetyLayer(
        SafetyLimits(max_rotation=0.1, gripper_range=(0.0, 100.0), reject_above=400.0), joint
    )
    decision = safety.check(np.array([1.0, 0.05, 50.0]), {JOINTS: np.array([0.0, 0.0])})
    assert decision.flags == Intervention.CLAMP_ROTATION
    np.testing.assert_allclose(decision.action, [0.1, 0.05, 50.0])


def test_limits_and_action_spaces_validate():
    with pytest.raises(DatamilError):
        SafetyLimits(workspace_low=(0, 0, 1), workspace_high=(1, 1, 0))
    with pytest.raises(DatamilError):
        SafetyLimits(watchdog_deadline_s=2.0, watchdog_stop_s=1.0)
    with pytest.raises(DatamilError):
        ActionSpace(dim=4, translation=(0, 3), gripper=2)


def test_watchdog_expires_after_stop_time():
    now = [0.0]
    watchdog = Watchdog(0.1, 0.5, clock=lambda: now[0])
    now[0] = 0.4
    assert not watchdog.expired()
    now[0] = 0.6
    assert watchdog.expired()
    watchdog.feed()
    assert not watchdog.expired()


# ---------------------------------------------------------------- chunks
def test_chunk_executor_runs_k_then_asks_again():
    executor = ChunkExecutor(2)
    executor.push(np.arange(8.0).reshape(4, 2))
    assert [executor.pop().tolist() for _ in range(2)] == [[0, 1], [2, 3]] and executor.empty()


def test_temporal_ensembling_averages_overlapping_predictions():
    ensemble = TemporalEnsembler(decay=0.0)
    first = ensemble(np.array([[0.0], [2.0], [4.0]]))
    second = ensemble(np.array([[10.0], [20.0], [30.0]]))
    third = ensemble(np.array([[100.0], [200.0], [300.0]]))
    assert first[0] == 0.0 and second[0] == 6.0  # mean of 2 (old chunk, step 1) and 10
    assert third[0] == pytest.approx((4 + 20 + 100) / 3)
    weighted = TemporalEnsembler(decay=np.log(2.0))
    weighted(np.array([[0.0], [3.0]]))
    assert weighted(np.array([[6.0], [0.0]]))[0] == pytest.approx((3 * 1 + 6 * 0.5) / 1.5)


# ---------------------------------------------------------------- SimArm
def test_sim_action_maps_to_the_common_convention():
    action = np.array([0.5, -1.0, 0.2, 1.0], np.float32)
    common = to_common(action)
    np.testing.assert_allclose(common, [0.005, -0.01, 0.002, 0, 0, 0, 0.0], atol=1e-7)  # grip +1 = closed
    np.testing.assert_allclose(from_common(common), action, atol=1e-6)


def test_simarm_follows_the_protocol_and_reports_success(arm):
    obs = arm.home()
    assert obs["state"].shape == (39,) and obs[EE_POSE].shape == (3,) and obs["success"] is False
    expert = ScriptedOperator(TASK)
    for _ in range(100):
        arm.apply(expert.next(arm.observe(), 0.1))
        if arm.observe()["success"]:
            break
    assert arm.observe()["success"]


class BadSource:
    """A broken policy: NaN, inf, huge and wrong-shaped actions, then a fine one."""

    actions = [np.full(4, np.nan), np.array([np.inf, 0, 0, 0]), np.array([1e9, 0, 0, 0]), np.zeros(7),
               np.zeros((3, 4)), np.array([1.0, 0, 0, -1.0])]  # fmt: skip

    def __init__(self) -> None:
        self.step = 0

    def reset(self, seed: int) -> None:
        self.step = 0

    def next(self, obs, timeout):
        self.step += 1
        return self.actions[min(self.step - 1, len(self.actions) - 1)]


def test_bad_actions_never_reach_the_arm(arm):
    start = arm.home()[EE_POSE].copy()
    safety, records = SafetyLayer(SIM_LIMITS, SIM_ACTION_SPACE), []
    safety.reset()
    cfg = LoopConfig(rate_hz=500, max_steps=5)
    result = run_episode(arm, BadSource(), safety, cfg, threading.Event(), records.append)
    assert result.interventions == {"reject_nonfinite": 2, "reject_magnitude": 1, "reject_shape": 2}
    assert np.abs(arm.observe()[EE_POSE] - start).max() < 6e-3  # held (the hand settles by ~3 mm after reset)
    assert all(np.all(np.isfinite(r.action)) and r.action.shape == (4,) for r in records)
    safety.reset()
    moved = run_episode(arm, BadSource(), safety, LoopConfig(rate_hz=500, max_steps=10), threading.Event())
    assert moved.steps == 10 and arm.observe()[EE_POSE][0] > start[0] + 0.01  # the good actions moved it


def test_dry_run_sends_nothing(arm, capsys):
    start = arm.home()[EE_POSE].copy()
    safety = SafetyLayer(SIM_LIMITS, SIM_ACTION_SPACE)
    result = run_episode(arm, ScriptedOperator(TASK), safety, LoopConfig(rate_hz=500, max_steps=5, dry_run=True),
                         threading.Event())  # fmt: skip
    assert result.interventions == {"dry_run": 5}
    np.testing.assert_allclose(arm.observe()[EE_POSE], start)
    assert capsys.readouterr().out.count("[dry run]") == 5


def test_operator_stop_key_ends_the_episode(arm):
    arm.home()
    keys, stop = KeyEvents("none"), threading.Event()
    from datamil.real_robot.keys import install_stop

    install_stop(stop, keys)
    timer = threading.Timer(0.2, keys.press, args=("q",))
    timer.start()
    safety = SafetyLayer(SIM_LIMITS, SIM_ACTION_SPACE)
    result = run_episode(arm, ScriptedOperator(TASK), safety, LoopConfig(rate_hz=50, max_steps=500), stop)
    timer.join()
    assert (
        result.end_reason == "operator" and result.interventions["stop_operator"] == 1 and result.steps < 100
    )


def test_keyboard_teleop_maps_keys_to_actions():
    keys = KeyEvents("none")
    operator = KeyboardOperator(TASK, SIM_ACTION_SPACE, keys, speed=0.5, hold_steps=2)
    keys.press("w")
    keys.press("space")
    actions = [operator.next({}, 0.1) for _ in range(3)]
    np.testing.assert_allclose(actions[0], [0.5, 0, 0, 1.0])  # +x, gripper closed
    np.testing.assert_allclose(actions[2], [0, 0, 0, 1.0])  # the press lasted hold_steps
    keys.press("enter")
    assert operator.done


# ---------------------------------------------------------------- configs
@pytest.mark.parametrize("entry", ["run", "teleop"])
@pytest.mark.parametrize("robot", ["sim", "franka", "ur", "xarm", "lerobot"])
def test_every_robot_config_loads_and_validates_without_hardware(entry, robot):
    from hydra import compose, initialize_config_dir

    from datamil.real_robot.build import build_loop, build_robot, build_safety

    with initialize_config_dir(config_dir=str(CONFIGS), version_base=None):
        cfg = compose(
            config_name=entry, overrides=[f"robot={robot}", "task=demo" if robot != "sim" else "seed=0"]
        )
    arm = build_robot(cfg)  # constructs only: no SDK import, no connection
    safety, loop = build_safety(cfg, arm), build_loop(cfg)
    assert arm.action_space.dim == {"sim": 4, "lerobot": 6}.get(robot, 7)
    assert loop.rate_hz == cfg.control.rate_hz and loop.max_steps == cfg.control.max_steps
    assert safety.limits.watchdog_stop_s == cfg.safety.watchdog_stop_s  # the robot's own limits, not defaults


def test_serve_config_requires_a_checkpoint():
    from hydra import compose, initialize_config_dir
    from omegaconf import MissingMandatoryValue

    with initialize_config_dir(config_dir=str(CONFIGS), version_base=None):
        cfg = compose(config_name="serve")
    with pytest.raises(MissingMandatoryValue):
        _ = cfg.checkpoint


class FakeController:
    """ur-rtde's control box as far as URArm uses it: a TCP pose and eight standard digital outputs."""

    def __init__(self) -> None:
        self.outputs, self.servo_calls = [False] * 8, 0

    def module(self, cls: str):
        import types

        ctrl = self

        class Interface:
            def __init__(self, host: str) -> None:
                self.host = host

            def getActualTCPPose(self):  # ur-rtde's names
                return [0.1, -0.4, 0.3, 0.0, 3.14, 0.0]

            def getDigitalOutState(self, pin):
                return ctrl.outputs[pin]

            def setStandardDigitalOut(self, pin, level):
                ctrl.outputs[pin] = bool(level)
                return True

            def servoL(self, *args):
                ctrl.servo_calls += 1

            def servoStop(self):
                pass

            def moveJ(self, q):
                pass

            def stopScript(self):
                pass

            def disconnect(self):
                pass

        return types.SimpleNamespace(**{cls: Interface})


def fake_rtde(monkeypatch) -> FakeController:
    import sys

    ctrl = FakeController()
    for name, cls in (("rtde_control", "RTDEControlInterface"), ("rtde_receive", "RTDEReceiveInterface"),
                      ("rtde_io", "RTDEIOInterface")):  # fmt: skip
        monkeypatch.setitem(sys.modules, name, ctrl.module(cls))
    return ctrl


def test_ur_gripper_is_a_digital_output_read_back_from_the_controller(monkeypatch):
    from datamil.real_robot.drivers.ur import URArm

    ctrl = fake_rtde(monkeypatch)
    arm = URArm("192.168.1.10", gripper_output=3)
    arm.connect()
    assert arm.home()["gripper"] == 1.0 and ctrl.outputs[3] is False  # homed open: close level (high) off
    arm.apply(np.array([0, 0, 0, 0, 0, 0, 0.1]))
    assert ctrl.outputs[3] is True and arm.observe()["gripper"] == 0.0  # closed, as the controller reports
    ctrl.outputs[3] = False  # something else (a program, the teach pendant) opens it
    assert arm.observe()["gripper"] == 1.0 and arm.observe()["state"][6] == 1.0  # measured, not the command
    arm.close()
    with pytest.raises(DatamilError, match="gripper_output=8"):
        URArm("192.168.1.10", gripper_output=8)


def test_ur_without_a_gripper_drives_no_output_and_reports_a_constant(monkeypatch):
    from datamil.real_robot.drivers.ur import URArm

    ctrl = fake_rtde(monkeypatch)
    arm = URArm("192.168.1.10")
    arm.connect()
    arm.home()
    arm.apply(np.array([0, 0, 0, 0, 0, 0, 0.0]))  # a close command goes nowhere
    assert ctrl.servo_calls == 1 and not any(ctrl.outputs) and arm._io is None
    assert arm.observe()["gripper"] == 1.0  # gripper_open, not the last command
    arm.close()

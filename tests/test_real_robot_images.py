"""Image policies on the deployment loop: SimArm's cameras, the policy server and the recorder.

SimArm renders its cameras in its env worker process (Mesa's EGL never shares a process with the
TensorFlow that writes RLDS here); a real `python -m datamil.real_robot.serve` process feeds the frames to an
image BC policy; the recorder writes them back to RLDS, read again by datamil's reader.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from datamil.checkpoint import save_policy
from datamil.data.rlds import read_rlds
from datamil.errors import DatamilError
from datamil.policies import POLICIES
from datamil.real_robot.build import match_cameras
from datamil.real_robot.cameras import CameraSet
from datamil.real_robot.chunking import PolicySource
from datamil.real_robot.client import PolicyClient
from datamil.real_robot.control import LoopConfig
from datamil.real_robot.localhost import ServerProcess
from datamil.real_robot.recording import SessionInfo, SessionRecorder, merge_session, session_episodes
from datamil.real_robot.safety import SafetyLayer, SafetyLimits
from datamil.real_robot.session import make_labeler, run_session
from datamil.real_robot.sim_arm import SIM_ACTION_SPACE, SimArm

pytestmark = [pytest.mark.sim, pytest.mark.filterwarnings("ignore::UserWarning")]

TASK = "metaworld/reach"
SIZE = (64, 64)  # not the default 84 x 84: SimArm must render at the policy's own size
CAMERAS = {"image_primary": "corner"}
LIMITS = SafetyLimits(
    workspace_low=(-0.45, 0.38, 0.05), workspace_high=(0.45, 0.95, 0.45), gripper_range=(-1.0, 1.0)
)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A small untrained image BC policy (conv encoder + state) served on localhost."""
    small = dict(channels=(8, 8), strides=(2, 2), keypoints=8, feature_dim=16, hidden=(32,))
    policy = POLICIES.get("bc_image")(
        39, 4, image_keys=list(CAMERAS), image_size=SIZE, cameras=CAMERAS, **small
    )
    checkpoint = save_policy(tmp_path_factory.mktemp("ckpt") / "bc_image.pt", policy, task=TASK)
    with ServerProcess(checkpoint) as server:
        yield server


class CapturingRecorder(SessionRecorder):
    """The recorder, keeping the steps the loop handed it (to compare with what it wrote)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.seen = []

    def step(self, record) -> None:
        self.seen.append(record)
        super().step(record)


def test_simarm_renders_its_cameras_upright_at_the_asked_size():
    arm = SimArm(TASK, seed=0, cameras=CAMERAS, image_size=SIZE)
    arm.connect()
    try:
        first = arm.home()["image_primary"]
        assert first.shape == (*SIZE, 3) and first.dtype == np.uint8 and arm.camera_keys == ["image_primary"]
        assert np.array_equal(arm.observe()["image_primary"], first)  # no step: the same frame
        for _ in range(10):
            arm.apply(np.array([1.0, 0.0, 0.0, 1.0]))
        moved = arm.observe()["image_primary"]
        assert moved.shape == first.shape and not np.array_equal(moved, first)
        # upright: the table (bright wood) fills the bottom of the corner view, the dark scene the top
        assert moved[-8:].mean() > moved[:8].mean()
    finally:
        arm.close()
    with pytest.raises(DatamilError, match="unknown camera 'cornr'.*corner"):
        SimArm(TASK, cameras={"image_primary": "cornr"}).connect()
    with pytest.raises(DatamilError, match="must start with 'image'"):
        SimArm(TASK, cameras={"primary": "corner"})


def test_image_policy_is_served_drives_simarm_and_frames_are_recorded(server, tmp_path):
    client = PolicyClient(server.url)
    assert client.connect(wait_s=10)
    meta = client.meta
    assert meta["obs_keys"] == ["image_primary", "state"] and meta["image_sizes"] == {
        "image_primary": [64, 64]
    }
    arm = SimArm(TASK, seed=1)
    match_cameras(arm, meta)  # a SimArm without cameras renders the policy's own views, at its size
    assert arm.camera_keys == ["image_primary"] and arm.cameras.size == SIZE

    info = SessionInfo(dataset="sim_image_rollouts", task=TASK, robot="SimArm", operator="policy")
    recorder = CapturingRecorder(tmp_path / "s", info)
    loop = LoopConfig(rate_hz=30, max_steps=12)
    safety = SafetyLayer(LIMITS, SIM_ACTION_SPACE)
    summary = run_session(arm, PolicySource(client), safety, recorder, loop, 1, make_labeler("sim"))
    result = summary.results[0]
    assert result.steps == 12 and result.end_reason == "max_steps"
    assert "hold_no_action" not in result.interventions and "reject_shape" not in result.interventions

    # the frames reach the policy: a black frame gives another action than the camera's
    obs = recorder.seen[-1].obs
    camera = client.infer(obs, timeout=5.0)
    black = client.infer({**obs, "image_primary": np.zeros_like(obs["image_primary"])}, timeout=5.0)
    assert camera.shape == (1, 4) and not np.allclose(camera, black)
    client.close()

    (episode, record), = session_episodes(tmp_path / "s")  # fmt: skip
    frames = episode.observations["image_primary"]
    assert frames.shape == (12, *SIZE, 3) and frames.dtype == np.uint8
    np.testing.assert_array_equal(frames, np.stack([s.obs["image_primary"] for s in recorder.seen]))
    assert record["checkpoint_id"] == meta["checkpoint_id"] and episode.observations["state"].shape == (
        12,
        39,
    )

    merged = merge_session([tmp_path / "s"], tmp_path / "data", "sim_image_rollouts")
    (read,) = list(read_rlds(merged, progress=False))
    np.testing.assert_array_equal(read.observations["image_primary"], frames)


def test_run_entry_point_gives_an_image_policy_the_sim_cameras_it_reads(server, tmp_path):
    """`python -m datamil.real_robot.run robot=sim` with no cameras set renders what the served policy reads."""
    command = [sys.executable, "-m", "datamil.real_robot.run", f"task={TASK}", f"server.url={server.url}",
               "episodes=1", "control.max_steps=5", "control.rate_hz=30", "key_input=none", "label=sim",
               "recording.enabled=false"]  # fmt: skip
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "episode 0: max_steps, 5 steps" in done.stdout and "interventions {}" in done.stdout, done.stdout


def test_a_robot_without_the_policys_cameras_is_refused_in_one_line():
    meta = {"obs_keys": ["image_primary", "image_wrist", "state"], "image_sizes": {}, "cameras": {}}

    class Arm:  # a real driver's shape: cameras from robot.cameras in datamil/configs/robot/<arm>.yaml
        cameras = CameraSet([{"name": "primary"}])

    with pytest.raises(DatamilError, match=r"\['image_wrist'\].*cameras named \['wrist'\]"):
        match_cameras(Arm(), meta)
    with pytest.raises(DatamilError, match="names no simulator camera.*robot.cameras"):
        match_cameras(SimArm(TASK), meta)
    match_cameras(SimArm(TASK), {"obs_keys": ["state"]})  # state policies need no camera
    with pytest.raises(DatamilError, match="add image_wrist: <MetaWorld camera> to robot.cameras"):
        match_cameras(SimArm(TASK, cameras=CAMERAS), meta)

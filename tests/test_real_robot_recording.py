"""Sessions are never lost: episodes land atomically one by one; crashes leave a marked partial episode.

The last test kills `python -m datamil.real_robot.teleop` (scripted operator on SimArm) with SIGKILL mid-episode.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from datamil.data.rlds import read_rlds
from datamil.real_robot.control import LoopConfig, run_episode
from datamil.real_robot.operators import ScriptedOperator
from datamil.real_robot.recording import SessionInfo, SessionRecorder, recover, recoverable, session_episodes
from datamil.real_robot.safety import SafetyLayer, SafetyLimits
from datamil.real_robot.session import make_labeler, run_session
from datamil.real_robot.sim_arm import SIM_ACTION_SPACE, SimArm

pytestmark = [pytest.mark.sim, pytest.mark.filterwarnings("ignore::UserWarning")]

TASK = "metaworld/reach"
INFO = SessionInfo(dataset="sim_demos", task=TASK, robot="SimArm", operator="scripted")
LIMITS = SafetyLimits(
    workspace_low=(-0.45, 0.38, 0.05), workspace_high=(0.45, 0.95, 0.45), gripper_range=(-1, 1)
)


class CrashingOperator(ScriptedOperator):
    """The expert until step `crash_at` of its second episode, then an exception (a bug mid-episode)."""

    def __init__(self, crash_at: int) -> None:
        super().__init__(TASK)
        self.crash_at, self.episode, self.step = crash_at, -1, 0

    def reset(self, seed: int) -> None:
        self.episode, self.step = self.episode + 1, 0

    def next(self, obs, timeout):
        self.step += 1
        if self.episode == 1 and self.step > self.crash_at:
            raise RuntimeError("operator crashed")
        return super().next(obs, timeout)


def test_exception_mid_episode_keeps_earlier_episodes_and_marks_the_partial_one(tmp_path):
    recorder = SessionRecorder(tmp_path / "s", INFO)
    loop = LoopConfig(rate_hz=400, max_steps=30)
    safety = SafetyLayer(LIMITS, SIM_ACTION_SPACE)
    with pytest.raises(RuntimeError, match="operator crashed"):
        run_session(SimArm(TASK), CrashingOperator(12), safety, recorder, loop, 3, make_labeler("sim"))
    complete = list(session_episodes(tmp_path / "s"))
    assert [len(e) for e, _ in complete] == [30]
    everything = list(session_episodes(tmp_path / "s", include_partial=True))
    partial, record = everything[1]
    assert len(partial) == 12 and record["partial"] and partial.meta.episode_id.endswith("/partial")
    assert partial.meta.success is None and "operator crashed" in record["end_reason"]
    assert not list((tmp_path / "s").glob(".ep_*.journal"))


def test_torn_journal_is_recovered_as_a_partial_episode(tmp_path):
    root = tmp_path / "s"
    recorder = SessionRecorder(root, INFO, fsync_every=1)
    arm, steps = SimArm(TASK), []
    arm.connect()
    arm.home()
    recorder.begin("ckpt@1:abc")
    run_episode(arm, ScriptedOperator(TASK), SafetyLayer(LIMITS, SIM_ACTION_SPACE), LoopConfig(400, 8),
                threading.Event(), lambda r: (recorder.step(r), steps.append(r)))  # fmt: skip
    journal = next(root.glob(".ep_*.journal"))
    os.truncate(journal, journal.stat().st_size - 5)  # the process died halfway through writing a step
    recovered = SessionRecorder(root, INFO).recovered
    assert len(recovered) == 1 and recovered[0].parent.name == "ep_000000_partial"
    episode, record = next(session_episodes(root, include_partial=True))
    assert len(episode) == 7 and record["checkpoint_id"] == "ckpt@1:abc" and record["partial"]
    np.testing.assert_allclose(episode.actions, [s.action for s in steps[:7]], atol=1e-6)
    assert not list(session_episodes(root)) and not journal.exists()


def _episode_dirs(root) -> list[str]:
    episodes = root / "episodes"
    return sorted(p.name for p in episodes.iterdir()) if episodes.is_dir() else []


def _mid_episode(root, max_steps: int) -> bool:
    """Two episodes finished and a third one is under way: `recover` would make a partial episode of its
    journal, which holds some, not all, of its steps. (Between the final rename and the journal's unlink, a
    finished episode's journal is still there; a kill in that window rightly leaves nothing to recover.)"""
    if len(_episode_dirs(root)) < 2:
        return False
    for journal in root.glob(".ep_*.journal"):
        try:
            found = recoverable(root, journal)
        except FileNotFoundError:  # finished (unlinked) between the listing and the open
            continue
        if found is not None and len(found[1]) < max_steps:
            return True
    return False


def test_killed_teleop_process_leaves_earlier_episodes_intact(tmp_path):
    max_steps = 60  # each episode's length: the teleop config, the waiting rule and the checks
    root = tmp_path / "session"
    command = [sys.executable, "-m", "datamil.real_robot.teleop", "operator.name=scripted", f"task={TASK}", "key_input=none",
               "label=sim", "episodes=50", "control.rate_hz=100", f"control.max_steps={max_steps}", f"recording.root={root}",
               "recording.fsync_every=1"]  # fmt: skip
    process = subprocess.Popen(
        command, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 120
    try:
        while True:
            assert process.poll() is None, process.stderr.read()
            assert time.monotonic() < deadline, "teleop did not record two episodes in time"
            if _mid_episode(root, max_steps=max_steps):
                # freeze it, then look again: on a busy machine the episode may end in between
                process.send_signal(signal.SIGSTOP)
                os.waitpid(process.pid, os.WUNTRACED)  # returns once the process is stopped
                if _mid_episode(root, max_steps=max_steps):
                    break
                process.send_signal(signal.SIGCONT)
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)
    finally:
        process.kill()
        process.wait()
    finished = _episode_dirs(root)
    episodes = [e for path in finished for e in read_rlds(root / "episodes" / path, progress=False)]
    assert len(episodes) == len(finished) >= 2 and all(len(e) == max_steps for e in episodes)
    assert all(e.meta.success is not None for e in episodes)
    recovered = recover(root)
    assert len(recovered) == 1 and recovered[0].parent.name.endswith("_partial")
    partial, record = list(session_episodes(root, include_partial=True))[-1]
    assert record["partial"] and 0 < len(partial) < max_steps

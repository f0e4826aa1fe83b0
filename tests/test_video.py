"""Evaluation videos: real MP4s rendered offscreen in a spawned process, and the no-GL path."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from datamil.checkpoint import save_policy
from datamil.errors import DatamilError
from datamil.policies import POLICIES
from datamil.sim_tasks.evaluation import evaluate_checkpoint, record_evaluation_video, video_line
from datamil.video import VideoConfig, VideoUnavailable, record_video

pytestmark = pytest.mark.sim
imageio = pytest.importorskip(
    "imageio.v2", reason="videos need the video extra: pip install 'datamil[video]'"
)
pytest.importorskip("imageio_ffmpeg", reason="videos need the video extra: pip install 'datamil[video]'")

TASK = "metaworld/reach"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A small untrained state MLP saved as a real checkpoint for the reach task."""
    policy = POLICIES.get("bc_mlp")(39, 4, hidden=(16,))
    return save_policy(tmp_path_factory.mktemp("ckpt") / "policy.pt", policy, task=TASK)


def read_mp4(path: Path) -> list[np.ndarray]:
    return [frame for frame in imageio.get_reader(path)]  # the reader's len() is inf: no list(reader)


def expected_frames(length: int, every: int) -> int:
    """The reset frame, every `every`-th step, and the last step."""
    return 1 + sum(1 for t in range(1, length + 1) if t % every == 0 or t == length)


def test_evaluation_video_is_written_readable_and_matches_the_evaluation(checkpoint, tmp_path) -> None:
    result = evaluate_checkpoint(checkpoint, n_episodes=3, max_steps=12, n_envs=3, progress=False)
    config = VideoConfig(episodes=2, size=(64, 96), fps=10, every=5)
    section = record_evaluation_video(checkpoint, result, tmp_path, config)
    assert "error" not in section and section["size"] == [64, 96]
    assert [e["episode"] for e in section["episodes"]] == [0, 1]
    for entry in section["episodes"]:
        assert entry["matches_evaluation"], entry
        frames = read_mp4(tmp_path / entry["path"])
        assert len(frames) == entry["frames"] == expected_frames(entry["length"], 5)
        assert frames[0].shape == (64, 96, 3) and frames[0].dtype == np.uint8
        assert frames[0].std() > 5  # a picture of the scene, not a blank frame
    assert sorted(p.name for p in (tmp_path / "videos").iterdir()) == ["episode_000.mp4", "episode_001.mp4"]
    assert "2/2 re-runs match" in video_line(section, tmp_path)


def test_no_episodes_means_no_process_and_no_files(checkpoint, tmp_path) -> None:
    assert record_video(checkpoint, TASK, 0, tmp_path / "videos", VideoConfig(episodes=0)) == []
    assert not (tmp_path / "videos").exists()
    assert VideoConfig.from_eval({}) == VideoConfig()


@pytest.mark.parametrize(
    "bad", [dict(size=(63, 64)), dict(size=(0, 64)), dict(fps=0), dict(every=0), dict(episodes=-1)]
)
def test_bad_settings_fail_in_one_line(bad) -> None:
    with pytest.raises(DatamilError) as info:
        VideoConfig(**bad).check()
    assert "\n" not in str(info.value)


def test_unknown_camera_lists_the_valid_ones(checkpoint, tmp_path) -> None:
    with pytest.raises(DatamilError, match="valid names: .*corner") as info:
        record_video(checkpoint, TASK, 0, tmp_path, VideoConfig(episodes=1, camera="nope"), max_steps=3)
    assert "\n" not in str(info.value) and not any(tmp_path.iterdir())


def test_invalid_gl_backend_in_the_worker_is_one_line_with_the_fix(checkpoint, tmp_path, monkeypatch) -> None:
    # This process imported mujoco already; the spawned video process reads the broken value afresh.
    monkeypatch.setenv("MUJOCO_GL", "bogus")
    with pytest.raises(VideoUnavailable) as info:
        record_video(checkpoint, TASK, 0, tmp_path / "videos", VideoConfig(episodes=1), max_steps=3)
    message = str(info.value)
    assert "\n" not in message and "MUJOCO_GL=bogus" in message
    assert "libegl1 libgl1-mesa-dri" in message and "MUJOCO_GL=egl" in message
    assert not (tmp_path / "videos").exists() or not any((tmp_path / "videos").iterdir())


def test_cli_without_gl_still_writes_the_numbers_and_says_one_line(checkpoint, tmp_path) -> None:
    """MUJOCO_GL=bogus breaks even `import mujoco`; the evaluation runs its physics without GL anyway."""
    run_dir = tmp_path / "run"
    env = {**os.environ, "MUJOCO_GL": "bogus", "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    args = [f"checkpoint={checkpoint}", "eval.n_episodes=2", "eval.max_steps=5", "eval.video_episodes=1"]
    proc = subprocess.run(
        [sys.executable, "-m", "datamil.evaluate", *args, f"hydra.run.dir={run_dir}"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    progress_bar = "eval "
    lines = [line for line in proc.stderr.splitlines() if line.strip() and not line.startswith(progress_bar)]
    assert len(lines) == 1 and lines[0].startswith("video not written:"), proc.stderr
    assert "MUJOCO_GL=bogus" in lines[0] and "libegl1 libgl1-mesa-dri" in lines[0]
    results = json.loads((run_dir / "results.json").read_text())
    assert results["n_episodes"] == 2
    assert results["video"]["error"] == lines[0].removeprefix("video not written: ")
    assert (run_dir / "results.csv").is_file() and not (run_dir / "videos").exists()

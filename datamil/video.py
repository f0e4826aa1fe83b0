"""MP4 videos of evaluation episodes, rendered offscreen in a separate process.

Why a separate, spawned process: Mesa's EGL and TensorFlow crash when they share a process, and a
broken GL driver may abort its process; the evaluation itself never renders, so it runs at full speed
and its numbers survive whatever happens to the video. The worker re-runs episodes 0..N-1 of
(task, seed) with the checkpoint's policy through the same lockstep bookkeeping as the evaluation (one
slot), so it films the evaluation's own start states; each episode's outcome is returned so callers
can check that the re-run matched (it does for deterministic policies).

Each episode becomes `<out_dir>/episode_NNN.mp4`, written to a temporary file and renamed when complete.
MP4s are H.264 through `imageio` + `imageio-ffmpeg` (its wheel ships an ffmpeg binary): `pip install
'datamil[video]'`.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

from datamil.errors import DatamilError
from datamil.io import temp_file
from datamil.sim_tasks.render import CameraConfig

GL_FIX = (
    "install Debian packages libegl1 libgl1-mesa-dri and set MUJOCO_GL=egl "
    "(or install libosmesa6 and set MUJOCO_GL=osmesa)"
)
INSTALL_FIX = "pip install 'datamil[video]' (imageio and imageio-ffmpeg)"
VIDEO_KEY = "image_video"  # CameraConfig wants image keys; this one never reaches the policy


class VideoUnavailable(DatamilError):
    """No video can be written here (no GL backend, no ffmpeg); the evaluation numbers are unaffected."""


@dataclass(frozen=True)
class VideoConfig:
    """What to film: the first `episodes` evaluation episodes from `camera`, (H, W) = `size`.

    every: keep one frame per `every` env steps (MetaWorld steps at 80 Hz), plus the last frame.
    fast: shadows, reflections and skybox off, several times faster in software GL (darker picture).
    """

    episodes: int = 0
    camera: str = "corner"
    size: tuple[int, int] = (256, 256)
    fps: int = 30
    every: int = 2
    fast: bool = True

    @classmethod
    def from_eval(cls, cfg: Mapping[str, Any]) -> VideoConfig:
        """From the `eval` config group (video_* fields); missing fields keep their defaults."""
        default = cls()
        size = cfg.get("video_size") or default.size
        config = cls(
            int(cfg.get("video_episodes") or 0),
            str(cfg.get("video_camera") or default.camera),
            (int(size[0]), int(size[1])),
            int(cfg.get("video_fps") or default.fps),
            int(cfg.get("video_every") or default.every),
            bool(cfg.get("video_fast", default.fast)),
        )
        config.check()
        return config

    def check(self) -> None:
        """One-line DatamilError for settings ffmpeg or the renderer would reject later."""
        if self.episodes < 0 or self.fps <= 0 or self.every <= 0:
            raise DatamilError(
                f"video_episodes={self.episodes}, video_fps={self.fps}, video_every={self.every}: "
                "need episodes >= 0, fps > 0 and every > 0"
            )
        if min(self.size) <= 0 or any(s % 2 for s in self.size):
            raise DatamilError(
                f"video_size {list(self.size)} must be positive and even (H.264), e.g. [256, 256]"
            )

    @property
    def cameras(self) -> CameraConfig:
        return CameraConfig(((VIDEO_KEY, self.camera),), self.size, self.fast)

    def to_dict(self) -> dict[str, Any]:
        return {
            "camera": self.camera,
            "size": list(self.size),
            "fps": self.fps,
            "every": self.every,
            "fast": self.fast,
        }


@dataclass(frozen=True)
class VideoEpisode:
    """One filmed episode: where its MP4 is and how the re-run went."""

    episode: int
    path: Path
    frames: int
    success: bool
    length: int


# ---------------------------------------------------------------------------- GL backend probe
_PROBE = """
import datamil.gl, sys
datamil.gl.configure_gl()
stage = "import"
try:
    import mujoco
    stage = "render"
    model = mujoco.MjModel.from_xml_string("<mujoco><worldbody><geom size='1'/></worldbody></mujoco>")
    renderer = mujoco.Renderer(model, 16, 16)
    renderer.update_scene(mujoco.MjData(model))
    renderer.render()
    renderer.close()
    print("ok", flush=True)
except Exception as error:
    cause = (str(error).strip().splitlines() or [""])[0]
    print(f"failed {stage} {type(error).__name__}: {cause}", flush=True)
"""


def gl_problem(timeout: float = 120.0) -> tuple[str | None, bool]:
    """(one-line reason MuJoCo cannot render here or None, whether `import mujoco` works at all).

    Probed in a fresh interpreter: MUJOCO_GL is read once at import, and a broken backend can make
    `import mujoco` itself fail (osmesa without libosmesa6, an unknown value) or abort the process.
    """
    try:
        probe = subprocess.run(
            [sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=timeout, env=os.environ
        )
    except subprocess.TimeoutExpired:
        return f"MuJoCo's GL probe hung for {timeout:.0f} s; {GL_FIX}", True
    answer = (probe.stdout.strip().splitlines() or [f"failed crash exit code {probe.returncode}"])[-1]
    if answer == "ok":
        return None, True
    _, stage, cause = (answer.split(" ", 2) + ["", ""])[:3]
    backend = os.environ.get("MUJOCO_GL", "<unset>")
    return f"MuJoCo cannot render with MUJOCO_GL={backend} ({cause[:160]}); {GL_FIX}", stage == "render"


def keep_physics_without_gl() -> str | None:
    """Probe GL; when the backend even breaks `import mujoco`, switch this process to MUJOCO_GL=disable.

    Physics needs no GL, so numeric evaluation goes on. Call before anything imports mujoco. Returns the
    one-line problem (to show the user and record instead of the video), or None when rendering works.
    """
    problem, importable = gl_problem()
    if problem and not importable and "mujoco" not in sys.modules:
        os.environ["MUJOCO_GL"] = "disable"
        os.environ.pop("PYOPENGL_PLATFORM", None)
    return problem


# ---------------------------------------------------------------------------- writing MP4s
class AtomicMp4:
    """An MP4 written frame by frame to a hidden temporary sibling, renamed into place on `commit`.

    Frames stream to ffmpeg, so a long episode never sits in memory; an interrupted or failed episode
    leaves no file behind.
    """

    def __init__(self, path: Path, fps: int) -> None:
        import imageio.v2 as imageio

        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, self.tmp = temp_file(path, suffix=".mp4")  # default permissions, unlike mkstemp
        os.close(fd)
        self.frames = 0
        self._writer = imageio.get_writer(
            self.tmp,
            format="FFMPEG",
            fps=fps,
            codec="libx264",
            quality=7,
            macro_block_size=2,
            ffmpeg_log_level="error",
        )

    def append(self, frame: np.ndarray) -> None:
        """Add one (H, W, 3) uint8 frame."""
        self._writer.append_data(frame)
        self.frames += 1

    def commit(self) -> Path:
        self._writer.close()
        os.replace(self.tmp, self.path)
        return self.path

    def abort(self) -> None:
        try:
            self._writer.close()
        finally:
            self.tmp.unlink(missing_ok=True)


def _check_writer_installed() -> None:
    """Fail in one line before any work when imageio or its ffmpeg binary is missing."""
    try:
        import imageio  # noqa: F401
        import imageio_ffmpeg

        imageio_ffmpeg.get_ffmpeg_exe()
    except (ImportError, RuntimeError) as error:
        raise VideoUnavailable(f"videos need imageio and ffmpeg ({error}); {INSTALL_FIX}") from None


# ---------------------------------------------------------------------------- filming in the worker
class FilmingEnv:
    """An EnvPool of one slot (the `datamil.sim_tasks.envpool` protocol) that films every episode it runs.

    reset opens `episode_NNN.mp4`; each step adds a frame every `config.every` steps and at the end.
    `policy_renderer` supplies image observations for policies that read cameras.
    """

    def __init__(
        self,
        env: Any,
        seed: int,
        renderer: Any,
        out_dir: Path,
        config: VideoConfig,
        policy_renderer: Any | None = None,
    ) -> None:
        self.env, self.seed, self.renderer, self.out_dir, self.config = env, seed, renderer, out_dir, config
        self.policy_renderer = policy_renderer
        self.writer: AtomicMp4 | None = None
        self.written: list[tuple[int, Path, int]] = []  # (episode, path, frames)
        self.episode, self.t = -1, 0

    def _obs(self, state: np.ndarray) -> Any:
        """(1, D) state, or {"state": (1, D), image keys: (1, H, W, 3)} for camera-reading policies."""
        if self.policy_renderer is None:
            return state[None]
        frames = self.policy_renderer.render(self.env.unwrapped.data)
        return {"state": state[None], **{k: v[None] for k, v in frames.items()}}

    def _film(self) -> None:
        self.writer.append(self.renderer.render(self.env.unwrapped.data)[VIDEO_KEY])

    def reset(self, slots: list[int], episodes: list[int]) -> Any:
        self.finish()
        self.episode, self.t = int(episodes[0]), 0
        state = self.env.reset(seed=self.seed, options={"episode": self.episode})[0]
        self.writer = AtomicMp4(self.out_dir / f"episode_{self.episode:03d}.mp4", self.config.fps)
        self._film()
        return self._obs(state)

    def step(self, slots: list[int], actions: np.ndarray) -> tuple[Any, np.ndarray, np.ndarray, np.ndarray]:
        state, reward, _, truncated, info = self.env.step(actions[0])
        self.t += 1
        success = bool(info["success"])
        if self.t % self.config.every == 0 or success or truncated:
            self._film()
        return self._obs(state), np.asarray([reward], float), np.asarray([success]), np.asarray([truncated])

    def finish(self) -> None:
        """Commit the episode being filmed, if any."""
        if self.writer is not None:
            frames = self.writer.frames
            self.written.append((self.episode, self.writer.commit(), frames))
            self.writer = None

    def close(self) -> None:
        """Drop an unfinished episode's temporary file and the GL contexts."""
        if self.writer is not None:
            self.writer.abort()
            self.writer = None
        for renderer in (self.renderer, self.policy_renderer):
            if renderer is not None:
                renderer.close()
        self.env.close()


def _gl_line(error: BaseException) -> str:
    cause = (str(error).strip().splitlines() or [""])[0][:160]
    backend = os.environ.get("MUJOCO_GL", "<unset>")
    return f"MuJoCo cannot render with MUJOCO_GL={backend} ({type(error).__name__}: {cause}); {GL_FIX}"


def _open_renderers(model: Any, config: VideoConfig, policy_cameras: CameraConfig | None) -> tuple[Any, Any]:
    """The video renderer and, for camera-reading policies, theirs; a GL failure is VideoUnavailable.

    A failed `mujoco.Renderer` complains again from `__del__`; that echo of the same error is muted.
    """
    import gc
    import warnings

    from datamil.sim_tasks.render import FrameRenderer

    hook = sys.unraisablehook
    sys.unraisablehook = lambda _: None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # glfw reports "no DISPLAY" as warnings before failing
            video = FrameRenderer(model, config.cameras)
            return video, FrameRenderer(model, policy_cameras) if policy_cameras else None
    except DatamilError:
        raise  # an unknown camera name: the message lists the valid ones
    except Exception as error:  # noqa: BLE001 - GL failures surface as many exception types
        raise VideoUnavailable(_gl_line(error)) from None
    finally:
        gc.collect()
        sys.unraisablehook = hook


def _film(job: dict[str, Any]) -> list[VideoEpisode]:
    """In the worker: roll out episodes 0..N-1 with the checkpoint's policy and film each one."""
    import functools

    from datamil.gl import configure_gl

    configure_gl()
    try:
        import mujoco  # noqa: F401 - the GL backend is chosen (and may fail) at import
    except Exception as error:  # noqa: BLE001
        raise VideoUnavailable(_gl_line(error)) from None
    from datamil.checkpoint import load_policy
    from datamil.sim_tasks.rollout import Lockstep, policy_cameras
    from datamil.sim_tasks.suites import make_env

    config: VideoConfig = job["config"]
    act = functools.partial(load_policy(job["checkpoint"]).policy.to(job["device"]).act, None)
    env = make_env(job["task"], job["seed"], job["stream"], job["max_steps"])
    try:
        renderers = _open_renderers(env.unwrapped.model, config, policy_cameras(act))
    except BaseException:
        env.close()
        raise
    film = FilmingEnv(env, job["seed"], renderers[0], Path(job["out_dir"]), config, renderers[1])
    try:
        run = Lockstep(film, config.episodes, 1, job["execute_steps"])  # same bookkeeping as evaluation
        while run.active:
            run.plan(act)
            run.advance()
        film.finish()
    finally:
        film.close()
    return [VideoEpisode(e, p, n, bool(run.success[e]), int(run.length[e])) for e, p, n in film.written]


def _film_in_worker(job: dict[str, Any]) -> tuple[str, Any]:
    """Spawned-process entry; answers plain data: ("ok", episodes) or ("gl" | "error", one line)."""
    try:
        return "ok", _film(job)
    except VideoUnavailable as error:
        return "gl", str(error)
    except Exception as error:  # noqa: BLE001 - report every failure as one line to the parent
        text = (str(error).strip().splitlines() or [""])[0]
        return "error", text if isinstance(error, DatamilError) else f"{type(error).__name__}: {text}"


def record_video(
    checkpoint: str | Path,
    task: str,
    seed: int,
    out_dir: str | Path,
    config: VideoConfig,
    max_steps: int = 500,
    execute_steps: int = 1,
    stream: int = 0,
    device: str = "cpu",
) -> list[VideoEpisode]:
    """Film episodes 0..config.episodes-1 of (task, seed, stream) into out_dir/episode_NNN.mp4, with the
    policy on `device` (a torch device name; the worker is spawned, so it may open CUDA itself).

    Runs in a spawned process that never imports TensorFlow. Raises VideoUnavailable (one line naming
    the fix) when no GL backend or no ffmpeg works here, DatamilError for other failures.
    """
    config.check()
    if config.episodes == 0:
        return []
    _check_writer_installed()
    job = dict(
        checkpoint=str(checkpoint),
        task=task,
        seed=seed,
        stream=stream,
        max_steps=max_steps,
        execute_steps=max(1, int(execute_steps)),
        out_dir=str(out_dir),
        config=config,
        device=str(device),
    )
    with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
        try:
            status, value = pool.submit(_film_in_worker, job).result()
        except BrokenProcessPool:
            raise VideoUnavailable(
                f"the video process died before answering (a GL driver crash?); {GL_FIX}"
            ) from None
    if status == "gl":
        raise VideoUnavailable(value)
    if status == "error":
        raise DatamilError(f"video not written: {value}")
    return value

"""SimArm's simulation: a MetaWorld env and its cameras, in this process or in a worker process.

Why a worker for cameras: Mesa's EGL and TensorFlow segfault when they share a process, and the robot
computer's process writes RLDS through TensorFlow (datamil.real_robot.recording). So with cameras the env and
its renderer (datamil.sim_tasks.render: fast flags, upright frames) live in `python -m datamil.real_robot.sim_worker`,
which imports nothing else, and the GL context is closed there explicitly. A fresh interpreter rather
than a multiprocessing "spawn" child: spawn re-imports the caller's main script, and a script that
imports TensorFlow at the top would bring it into the renderer.

Both give SimArm the same three calls. `step` is a command without a reply, as on a real arm: over the
socket it returns at once, and an error in it surfaces at the next call. `observe` renders the cameras
(once per state), like a camera read: one round trip (a frame is ~21 KB at 84 x 84; the render ~20 ms).
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import traceback
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any

import numpy as np

from datamil.errors import DatamilError

if TYPE_CHECKING:  # the worker unpickles it; importing it here would load the env suites early
    from datamil.sim_tasks.suites import EnvSpec

Reading = tuple[np.ndarray, bool, dict[str, np.ndarray]]  # state (39,), success so far, {image_*: (H, W, 3)}


class SimEnv:
    """The env behind SimArm in this process; `spec.cameras` (datamil.sim_tasks.render.CameraConfig) adds frames."""

    def __init__(self, spec: EnvSpec) -> None:
        self.env = spec.make()
        self.renderer: Any = None
        if spec.cameras is not None:
            from datamil.sim_tasks.render import EnvFrames

            self.renderer = EnvFrames(self.env, spec.cameras)
        self._state: np.ndarray | None = None
        self._success = False
        self._frames: dict[str, np.ndarray] | None = None  # of the current state, once rendered

    def reset(self) -> int:
        """Start the next seeded layout; returns its episode index."""
        self._state, info = self.env.reset()
        self._success, self._frames = False, None
        return int(info["episode"])

    def step(self, action: np.ndarray) -> None:
        self._state, _, _, _, info = self.env.step(np.asarray(action, np.float64))
        self._success = self._success or bool(info.get("success", 0.0))  # sticky for the episode
        self._frames = None

    def observe(self) -> Reading:
        if self.renderer is not None and self._frames is None:
            self._frames = self.renderer.frames()
        return self._state, self._success, self._frames or {}

    def close(self) -> None:
        if self.renderer is not None:
            self.renderer.close()
            self.renderer = None
        self.env.close()


def _serve(conn: Connection) -> None:
    """Worker: build a SimEnv from the first message, then run (command, argument) until "close" or EOF."""
    sim = None
    try:
        sim = SimEnv(conn.recv())
        conn.send(None)
        while True:
            try:
                command, argument = conn.recv()
            except EOFError:  # the parent died: exit quietly
                break
            if command == "close":
                break
            if command == "step":
                sim.step(argument)
            else:
                conn.send(getattr(sim, command)())
    except DatamilError as e:  # a bad setting (an unknown camera): one line for the user
        conn.send(DatamilError(str(e)))
    except Exception:  # noqa: BLE001 - reported to the parent instead of dying silently
        print(traceback.format_exc(), file=sys.stderr, flush=True)
        conn.send(DatamilError(f"SimArm env worker failed:\n{traceback.format_exc()}"))
    finally:
        if sim is not None:
            sim.close()
        conn.close()


class EnvProcess:
    """A SimEnv in `python -m datamil.real_robot.sim_worker`, with the same calls."""

    def __init__(self, spec: EnvSpec) -> None:
        ours, theirs = socket.socketpair()
        command = [sys.executable, "-m", "datamil.real_robot.sim_worker", str(theirs.fileno())]
        self._process = subprocess.Popen(command, pass_fds=[theirs.fileno()])
        theirs.close()
        self._conn = Connection(ours.detach())
        self._send(spec)
        self._receive()

    def _died(self) -> DatamilError:
        try:
            code = self._process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            code = None
        why = f"exit code {code}"
        if code == -signal.SIGSEGV:
            why = "segfault; Mesa's EGL crashes in a process that also loads TensorFlow"
        return DatamilError(f"SimArm env worker died ({why}); see its output above")

    def _send(self, message: Any) -> None:
        try:
            self._conn.send(message)
        except OSError:
            if self._conn.poll(0):  # the error the worker reported before it exited
                self._receive()
            raise self._died() from None

    def _receive(self) -> Any:
        try:
            message = self._conn.recv()
        except (EOFError, OSError):
            raise self._died() from None
        if isinstance(message, Exception):
            raise message
        return message

    def reset(self) -> int:
        self._send(("reset", None))
        return self._receive()

    def step(self, action: np.ndarray) -> None:
        self._send(("step", np.asarray(action, np.float64)))

    def observe(self) -> Reading:
        self._send(("observe", None))
        return self._receive()

    def close(self) -> None:
        try:
            self._conn.send(("close", None))
        except OSError:
            pass
        try:
            self._process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait(timeout=5)
        self._conn.close()


if __name__ == "__main__":
    _serve(Connection(int(sys.argv[1])))

"""Pick an OpenGL backend for MuJoCo before anything imports it, so headless machines just work.

MuJoCo reads MUJOCO_GL when `mujoco` is first imported. Without a display the default (GLFW) cannot
open a window and every offscreen render fails with an OpenGL traceback; EGL works headless (with
Mesa's software renderer when there is no GPU: Debian packages `libegl1` and `libgl1-mesa-dri`).
A value the user set is always kept.
"""

from __future__ import annotations

import os
import sys

HEADLESS_BACKEND = "egl"


def configure_gl(environ: dict[str, str] | None = None) -> str | None:
    """Set MUJOCO_GL (and PYOPENGL_PLATFORM to match) to EGL when no display is present.

    Returns the backend in force, or None when MuJoCo may open a window (a display exists). Has no
    effect on a process that already imported mujoco with another backend; call it first.
    """
    env = os.environ if environ is None else environ
    if env.get("MUJOCO_GL"):
        return env["MUJOCO_GL"]
    has_display = bool(env.get("DISPLAY") or env.get("WAYLAND_DISPLAY")) or sys.platform == "darwin"
    if has_display:
        return None
    env["MUJOCO_GL"] = HEADLESS_BACKEND
    env.setdefault("PYOPENGL_PLATFORM", HEADLESS_BACKEND)
    return HEADLESS_BACKEND

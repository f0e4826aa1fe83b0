"""datamil: pick the prior robot data that helps one new task, with datamodels (DataMIL)."""

from datamil.gl import configure_gl

configure_gl()  # before any module imports mujoco: headless machines render through EGL

__version__ = "0.1.0"

"""TensorFlow / TFDS imported lazily and quietly: the optional `tf` extra, shared by the RLDS reader and writer."""

from __future__ import annotations

import contextlib
import io
import logging
import os
from collections.abc import Iterator
from typing import Any

from datamil.errors import DatamilError

# Set before TensorFlow's first import: its C++ logging and the oneDNN banner ignore later changes.
# oneDNN only speeds up dense math, which the data path does not do. A user's own settings win.
_TF_QUIET_ENV = {"TF_CPP_MIN_LOG_LEVEL": "3", "TF_ENABLE_ONEDNN_OPTS": "0"}


def load_tf() -> tuple[Any, Any]:
    """(tensorflow, tensorflow_datasets), imported quietly on first use."""
    for key, value in _TF_QUIET_ENV.items():
        os.environ.setdefault(key, value)
    try:
        import tensorflow as tf
        import tensorflow_datasets as tfds
    except ImportError as e:
        raise DatamilError(
            f"RLDS needs TensorFlow ({e}); install it with: pip install 'datamil[tf]'"
        ) from None
    _stop_temp_dir_leak(tfds)
    return tf, tfds


def _stop_temp_dir_leak(tfds: Any) -> None:
    """TFDS (4.9) makes an empty /tmp/tmp*tfds directory, and never removes it, every time a new dataset
    is written (`DatasetInfo.initialize_from_bucket` runs `mkdtemp` before it checks whether GCS is
    enabled). Offline, GCS is disabled and the method does nothing else, so skip it then: thousands of
    recorded episodes otherwise leave thousands of empty directories behind."""
    from tensorflow_datasets.core.utils import gcs_utils

    info = tfds.core.DatasetInfo
    original = info.initialize_from_bucket
    if getattr(original, "skips_disabled_gcs", False):
        return

    def initialize_from_bucket(self: Any) -> None:
        if not getattr(gcs_utils, "_is_gcs_disabled", False):
            original(self)

    initialize_from_bucket.skips_disabled_gcs = True  # type: ignore[attr-defined]
    info.initialize_from_bucket = initialize_from_bucket


@contextlib.contextmanager
def quiet(tf: Any, tfds: Any) -> Iterator[None]:
    """Silence TFDS's prints, progress bars and absl/TF warnings for the duration of one call."""
    from tensorflow_datasets.core.utils import tqdm_utils

    loggers = [logging.getLogger("absl"), tf.get_logger()]
    levels = [lg.level for lg in loggers]
    bars = getattr(tqdm_utils, "_active", True)
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    tfds.display_progress_bar(False)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        tfds.display_progress_bar(bars)
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)

"""Operator keys: the stop key, keyboard teleoperation and the success label, from one key reader.

Backends: "terminal" reads single key presses from a TTY in cbreak mode (works over SSH, no extra
package); "pynput" listens to the desktop keyboard (extra `pynput`, imported only here); "none" reads
nothing (tests, scripted runs). Ctrl-C always works: the first press stops the episode like the stop
key, a second one raises KeyboardInterrupt.
"""

from __future__ import annotations

import logging
import queue
import signal
import sys
import threading
from collections.abc import Callable

from datamil.errors import DatamilError

log = logging.getLogger(__name__)
BACKENDS = ("auto", "terminal", "pynput", "none")
STOP_KEYS = ("q", "esc")


class KeyEvents:
    """Key presses as short names ("w", "space", "enter", "esc"), fanned out to subscribers and a queue."""

    def __init__(self, backend: str = "auto") -> None:
        if backend not in BACKENDS:
            raise DatamilError(f"keys backend {backend!r} must be one of {BACKENDS}")
        if backend == "auto":
            backend = "terminal" if sys.stdin.isatty() else "none"
        self.backend = backend
        self.presses: queue.Queue[str] = queue.Queue()
        self._subscribers: list[Callable[[str], None]] = []
        self._closing = threading.Event()
        self._thread: threading.Thread | None = None
        self._listener = None

    def subscribe(self, callback: Callable[[str], None]) -> None:
        self._subscribers.append(callback)

    def press(self, key: str) -> None:
        """Deliver one key press (called by the backends; tests and scripts may call it too)."""
        for callback in self._subscribers:
            callback(key)
        self.presses.put(key)

    def start(self) -> KeyEvents:
        if self.backend == "terminal":
            self._thread = threading.Thread(target=self._read_terminal, daemon=True, name="keys")
            self._thread.start()
        elif self.backend == "pynput":
            self._listener = _pynput_listener(self.press)
            self._listener.start()
        return self

    def wait(self, choices: tuple[str, ...], timeout: float | None = None) -> str | None:
        """The next press among `choices` (others are dropped), or None after `timeout` / without keys."""
        if self.backend == "none":
            return None
        while not self.presses.empty():  # presses made during the episode do not answer this question
            self.presses.get_nowait()
        try:
            while (key := self.presses.get(timeout=timeout)) not in choices:
                pass
        except queue.Empty:
            return None
        return key

    def _read_terminal(self) -> None:
        import select
        import termios
        import tty

        fd = sys.stdin.fileno()
        saved = termios.tcgetattr(fd)
        try:
            tty.setcbreak(fd)
            while not self._closing.is_set():
                if select.select([fd], [], [], 0.05)[0]:
                    self.press(_terminal_name(sys.stdin.read(1)))
        finally:
            termios.tcsetattr(fd, termios.TCSADRAIN, saved)

    def close(self) -> None:
        self._closing.set()
        if self._thread is not None:
            self._thread.join(timeout=1.0)
        if self._listener is not None:
            self._listener.stop()


def _terminal_name(char: str) -> str:
    return {" ": "space", "\n": "enter", "\r": "enter", "\x1b": "esc"}.get(char, char.lower())


def _pynput_listener(press: Callable[[str], None]):
    try:
        from pynput import keyboard
    except ImportError as e:
        raise DatamilError(
            f"keys=pynput needs pynput ({e}); pip install pynput, or use keys=terminal"
        ) from None

    def on_press(key) -> None:
        char = getattr(key, "char", None)
        press(char.lower() if char else str(getattr(key, "name", key)))

    return keyboard.Listener(on_press=on_press)


def install_stop(stop: threading.Event, keys: KeyEvents, stop_keys: tuple[str, ...] = STOP_KEYS) -> None:
    """Wire the stop key and Ctrl-C to `stop` (main thread only, for the signal handler)."""

    def on_key(key: str) -> None:
        if key in stop_keys and not stop.is_set():
            log.warning("operator stop (%s)", key)
            stop.set()

    keys.subscribe(on_key)
    previous = signal.getsignal(signal.SIGINT)

    def on_sigint(signum, frame) -> None:
        if stop.is_set():
            signal.signal(signal.SIGINT, previous)
            raise KeyboardInterrupt
        log.warning("operator stop (Ctrl-C); press it again to abort")
        stop.set()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, on_sigint)

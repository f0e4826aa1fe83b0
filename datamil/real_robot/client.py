"""The robot-side policy client: synchronous, bounded by a deadline, reconnecting on its own.

Why synchronous: the control loop is one thread at a fixed rate; a request either answers within the
watchdog deadline or the step holds. Failures never raise into the loop (the watchdog handles silence):
a dead server, a refused connection or a timeout all return None, and the next request reconnects
(at most one attempt per `retry_s`, so a dead server costs the loop almost nothing). Replies to requests
that timed out arrive late and are dropped by request id.
"""

from __future__ import annotations

import logging
import socket
import time
from typing import Any

import numpy as np

from datamil.errors import DatamilError
from datamil.real_robot.wire import pack, unpack

log = logging.getLogger(__name__)


class PolicyClient:
    """Talks to `python -m datamil.real_robot.serve` at `url` (ws://host:port)."""

    def __init__(self, url: str, connect_timeout: float = 1.0, retry_s: float = 0.25) -> None:
        self.url, self.connect_timeout, self.retry_s = url, connect_timeout, retry_s
        self.meta: dict | None = None
        self.reconnects = 0
        self.last_infer_ms = float("nan")  # server-side inference time of the last reply
        self._ws: Any = None
        self._next_id = 0
        self._last_attempt = -np.inf
        self._ever_connected = False

    @property
    def connected(self) -> bool:
        return self._ws is not None

    def connect(self, wait_s: float = 0.0) -> bool:
        """Try to connect now (and keep trying for `wait_s` seconds); True once connected."""
        deadline = time.monotonic() + wait_s
        while True:
            self._last_attempt = -np.inf
            if self._try_connect():
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(min(self.retry_s, 0.1))

    def _try_connect(self) -> bool:
        now = time.monotonic()
        if now - self._last_attempt < self.retry_s:
            return False
        self._last_attempt = now
        from websockets.exceptions import InvalidHandshake, InvalidURI
        from websockets.sync.client import connect

        try:
            ws = connect(
                self.url,
                open_timeout=self.connect_timeout,
                compression=None,
                max_size=None,
                proxy=None,
                close_timeout=0.2,
            )
            ws.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            meta = unpack(ws.recv(timeout=self.connect_timeout))
        except InvalidURI as e:
            raise DatamilError(
                f"policy server url {self.url!r} is invalid ({e}); use ws://host:port"
            ) from None
        except (OSError, TimeoutError, InvalidHandshake, DatamilError) as e:
            log.debug("policy server %s not reachable: %s", self.url, e)
            return False
        self._ws, self.meta = ws, meta
        self.reconnects += int(self._ever_connected)
        self._ever_connected = True
        log.info("connected to %s (%s, %s)", self.url, meta.get("policy"), meta.get("checkpoint_id"))
        return True

    def _drop(self) -> None:
        if self._ws is not None:
            try:
                self._ws.close()
            except Exception:  # noqa: BLE001 - the connection is already broken; closing is best effort
                pass
        self._ws = None

    def request(self, message: dict, timeout: float) -> dict | None:
        """The server's reply to `message`, or None if there is none within `timeout` seconds."""
        from websockets.exceptions import ConnectionClosed

        if self._ws is None and not self._try_connect():
            return None
        self._next_id += 1
        request_id = self._next_id
        deadline = time.monotonic() + timeout
        try:
            self._ws.send(pack({**message, "id": request_id}))
            while (left := deadline - time.monotonic()) > 0:
                reply = unpack(self._ws.recv(timeout=left))
                if reply.get("id") == request_id:
                    return _checked(reply)
        except TimeoutError:
            return None
        except (ConnectionClosed, OSError) as e:
            log.warning("lost the policy server %s: %s", self.url, e)
            self._drop()
        return None

    def infer(self, obs: dict[str, Any], timeout: float) -> np.ndarray | None:
        """(H, A) actions for one observation (only the keys the policy needs are sent), or None."""
        keys = (self.meta or {}).get("obs_keys") or ["state"]
        payload = {k: np.asarray(obs[k]) for k in keys if k in obs}
        reply = self.request({"type": "infer", "obs": payload}, timeout)
        if reply is None:
            return None
        self.last_infer_ms = float(reply.get("infer_ms", np.nan))
        return np.asarray(reply["actions"])

    def reset(self, seed: int, timeout: float) -> bool:
        """Reseed the server's sampler for a new episode; False when the server did not answer."""
        return self.request({"type": "reset", "seed": int(seed)}, timeout) is not None

    def close(self) -> None:
        self._drop()


def _checked(reply: dict) -> dict:
    """Server-side errors are configuration bugs (wrong observation keys): fail loudly, once."""
    if reply.get("type") == "error":
        raise DatamilError(f"policy server error: {reply.get('message')}")
    return reply

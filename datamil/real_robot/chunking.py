"""Turning the server's action chunks (H, A) into one action per control step.

Two ways (Chi et al. 2023; Zhao et al. 2023):
- execute k at a time: ask for a chunk, run its first k actions open loop, ask again. One round trip per
  k steps, which is what lets a slow diffusion policy keep the control rate;
- temporal ensembling: ask every step and average every chunk's prediction for the current step,
  weights w_i = exp(-decay * i) with i = 0 the oldest prediction (ACT, eq. in sec. 3.3).
"""

from __future__ import annotations

from collections import deque

import numpy as np

from datamil.errors import DatamilError
from datamil.real_robot.client import PolicyClient
from datamil.real_robot.robot import Observation


class ChunkExecutor:
    """Queues the first `k` actions of each chunk."""

    def __init__(self, k: int) -> None:
        if k < 1:
            raise DatamilError(f"execute_steps={k} must be >= 1")
        self.k = k
        self._queue: deque[np.ndarray] = deque()

    def reset(self) -> None:
        self._queue.clear()

    def empty(self) -> bool:
        return not self._queue

    def push(self, chunk: np.ndarray) -> None:
        """A chunk (H, A); anything else is queued whole, so the safety layer sees and rejects it."""
        chunk = np.asarray(chunk)
        self._queue.extend(chunk[: self.k] if chunk.ndim == 2 else [chunk])

    def pop(self) -> np.ndarray:
        return self._queue.popleft()


class TemporalEnsembler:
    """Averages the overlapping predictions of the chunks received at consecutive steps."""

    def __init__(self, decay: float = 0.01) -> None:
        self.decay = decay
        self._chunks: deque[tuple[int, np.ndarray]] = deque()  # (step it was predicted at, chunk)
        self._step = 0

    def reset(self) -> None:
        self._chunks.clear()
        self._step = 0

    def __call__(self, chunk: np.ndarray) -> np.ndarray:
        """The action for the current step, given the chunk just predicted for it; advances one step."""
        chunk = np.asarray(chunk)
        if chunk.ndim != 2:
            return chunk  # malformed: let the safety layer reject it
        if self._chunks and self._chunks[-1][1].shape != chunk.shape:
            self._chunks.clear()
        self._chunks.append((self._step, chunk))
        while self._step - self._chunks[0][0] >= len(self._chunks[0][1]):
            self._chunks.popleft()
        predictions = np.stack([c[self._step - t] for t, c in self._chunks])  # oldest first
        weights = np.exp(-self.decay * np.arange(len(predictions)))
        self._step += 1
        return (weights[:, None] * predictions).sum(0) / weights.sum()


class PolicySource:
    """An action source backed by the policy server (see control.ActionSource)."""

    def __init__(
        self,
        client: PolicyClient,
        execute_steps: int | None = None,
        temporal_ensemble: bool = False,
        ensemble_decay: float = 0.01,
    ) -> None:
        self.client = client
        self.temporal_ensemble = temporal_ensemble
        self._execute_steps = execute_steps
        self._executor: ChunkExecutor | None = None
        self._ensembler = TemporalEnsembler(ensemble_decay)

    @property
    def checkpoint_id(self) -> str | None:
        return (self.client.meta or {}).get("checkpoint_id")

    def _chunk_executor(self) -> ChunkExecutor:
        """k from config, else the policy's own n_action_steps (known once connected)."""
        if self._executor is None:
            k = self._execute_steps or int((self.client.meta or {}).get("n_action_steps", 1))
            self._executor = ChunkExecutor(k)
        return self._executor

    def reset(self, seed: int, timeout: float = 1.0) -> None:
        if self._executor is not None:
            self._executor.reset()
        self._ensembler.reset()
        self.client.reset(seed, timeout)

    def next(self, obs: Observation, timeout: float) -> np.ndarray | None:
        """The action for this step, or None when the server gave nothing fresh within `timeout`."""
        if self.temporal_ensemble:
            chunk = self.client.infer(obs, timeout)
            return None if chunk is None else self._ensembler(chunk)
        executor = self._executor
        if executor is None or executor.empty():
            chunk = self.client.infer(obs, timeout)
            if chunk is None:
                return None
            executor = self._chunk_executor()
            executor.push(chunk)
        return executor.pop()

    def close(self) -> None:
        self.client.close()

"""The policy server: any datamil checkpoint (BC or diffusion) behind a websocket, for the GPU machine.

Why a server: the robot computer runs the fixed-rate loop and the safety layer with few dependencies;
the desktop runs torch. The server is stateless between requests except for the diffusion sampler's seed
(set by "reset"), so a client may reconnect at any time. It always answers with a chunk (H, A): H = 1
for BC; the client decides how many actions of a chunk to execute (datamil.real_robot.chunking).

Inference runs inline on the event loop: one robot talks to one server, and a request queue would only
add latency. Wire format: datamil.real_robot.wire.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from datamil.errors import DatamilError
from datamil.real_robot.wire import pack, unpack

log = logging.getLogger(__name__)


def checkpoint_id(path: str | Path, step: int) -> str:
    """ "<file name>@<step>:<sha256[:12] of the file>": names the exact weights a rollout used."""
    digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()[:12]
    return f"{Path(path).name}@{step}:{digest}"


@dataclass
class ServedPolicy:
    """A loaded policy and the facts a client needs (sent once per connection as "meta")."""

    policy: Any
    name: str
    task: str
    checkpoint_id: str
    action_dim: int
    horizon: int
    n_action_steps: int
    obs_keys: list[str]
    device: str = "cpu"  # where the policy runs; each observation is moved there, each chunk back
    image_sizes: dict[str, list[int]] = field(default_factory=dict)  # image key -> [H, W] the policy sees
    cameras: dict[str, str] = field(default_factory=dict)  # image key -> simulator camera it was trained on
    render: dict[str, Any] = field(default_factory=dict)  # {"fast", "samples"} its training frames used

    def meta(self) -> dict:
        return {
            "type": "meta",
            "policy": self.name,
            "task": self.task,
            "checkpoint_id": self.checkpoint_id,
            "action_dim": self.action_dim,
            "horizon": self.horizon,
            "n_action_steps": self.n_action_steps,
            "obs_keys": self.obs_keys,
            "image_sizes": self.image_sizes,
            "cameras": self.cameras,
            "render": self.render,
        }

    def infer(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        """(H, A) float32 actions for one unbatched observation."""
        missing = [k for k in self.obs_keys if k not in obs]
        if missing:
            raise DatamilError(f"observation lacks {missing}; the policy needs {self.obs_keys}")
        import torch

        norm = getattr(self.policy, "data_normalization", None)  # trained on normalized data: raw units out
        if norm is not None:
            obs = {
                k: v[0]
                for k, v in norm.observations({k: np.asarray(obs[k])[None] for k in self.obs_keys}).items()
            }
        with torch.no_grad():  # received arrays are read-only views of the message: torch wants its own
            batch = {
                f"obs/{k}": torch.from_numpy(np.array(obs[k])).to(self.device)[None] for k in self.obs_keys
            }
            actions = self.policy.predict(batch).float().cpu().numpy()
            actions = actions if norm is None else norm.actions(actions)
        return actions[0] if actions.ndim == 3 else actions.reshape(1, -1)

    def reset(self, seed: int) -> None:
        """Reseed the diffusion sampler, so an episode's rollout is reproducible."""
        # a no-op for deterministic policies (Policy's chunks capability)
        self.policy.reset_sampler(int(seed))

    def handle(self, message: dict) -> dict:
        """The reply to one request; bad requests get an "error" reply, never a dead server."""
        request_id = message.get("id", 0)
        try:
            if message["type"] == "infer":
                start = time.perf_counter()
                actions = self.infer(message["obs"])
                elapsed = (time.perf_counter() - start) * 1e3
                return {"type": "actions", "id": request_id, "actions": actions, "infer_ms": elapsed}
            if message["type"] == "reset":
                self.reset(message.get("seed", 0))
                return {"type": "ok", "id": request_id}
            raise DatamilError(f"unknown request type {message['type']!r}; expected 'infer' or 'reset'")
        except (DatamilError, KeyError, ValueError, RuntimeError) as e:
            return {"type": "error", "id": request_id, "message": f"{type(e).__name__}: {e}"}


def load_served(path: str | Path, device: str = "cpu") -> ServedPolicy:
    """Load a checkpoint written by datamil.checkpoint.save_policy for serving on `device` (a
    `datamil.device.resolve_device` name: auto, cpu, cuda, cuda:<index>)."""
    from datamil.checkpoint import load_policy
    from datamil.device import resolve_device

    resolved = resolve_device(device)  # an unknown name or cuda without a GPU: one line, before loading
    loaded = load_policy(path)
    policy = loaded.policy.eval().to(resolved)
    obs_keys = sorted(k[len("obs/") :] for k in policy.batch_keys if k.startswith("obs/"))
    return ServedPolicy(
        policy=policy,
        name=loaded.name,
        task=loaded.task,
        checkpoint_id=checkpoint_id(path, loaded.step),
        action_dim=int(policy.init_kwargs["action_dim"]),
        horizon=int(policy.horizon or 1),  # None: one action per prediction
        n_action_steps=int(policy.n_action_steps),
        obs_keys=obs_keys,
        device=str(resolved),
        image_sizes=_image_sizes(policy),
        cameras={k: str(v) for k, v in policy.cameras.items()},
        render=dict(policy.render),
    )


def _image_sizes(policy: Any) -> dict[str, list[int]]:
    """[H, W] each camera is resized to inside an image policy (datamil.policies.vision); {} otherwise."""
    if not policy.image_keys:
        return {}
    encoder, keys = policy.encoder, policy.image_keys
    return {k: [int(n) for n in (encoder.image_size or encoder.shapes[k][:2])] for k in keys}


async def _session(websocket: Any, served: ServedPolicy) -> None:
    """One client connection: meta first, then request -> reply until it closes."""
    from websockets.exceptions import ConnectionClosed

    log.info("client connected from %s", websocket.remote_address)
    try:
        await websocket.send(pack(served.meta()))
        async for data in websocket:
            await websocket.send(pack(served.handle(unpack(data))))
    except ConnectionClosed:
        pass
    except DatamilError as e:  # a malformed message: drop this client, keep serving
        log.warning("closing a client after a malformed message: %s", e)
    log.info("client %s disconnected", websocket.remote_address)


async def serve(
    served: ServedPolicy, host: str, port: int, ready: Callable[[int], None] | None = None
) -> None:
    """Serve forever on ws://host:port (port 0 picks a free one, reported through `ready`)."""
    from websockets.asyncio.server import serve as ws_serve

    async def handler(websocket: Any) -> None:
        await _session(websocket, served)

    async with ws_serve(handler, host, port, compression=None, max_size=None) as server:
        bound = server.sockets[0].getsockname()[1] if server.sockets else port
        if ready is not None:
            ready(int(bound))
        await asyncio.Future()

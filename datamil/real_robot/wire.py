"""The policy server's wire format: msgpack maps with numpy arrays as raw little-endian bytes.

Why msgpack and raw bytes: one copy per array, no pickle (a robot computer must not unpickle what a
network peer sends), and any language with msgpack can talk to the server.

Messages (every one a map with "type"):
    server -> client on connect  {"type": "meta", policy, checkpoint_id, task, action_dim, horizon,
                                  n_action_steps, obs_keys, image_sizes {key: [H, W]},
                                  cameras {key: simulator camera}}
    client -> server             {"type": "infer", "id": int, "obs": {key: array (no batch dim)}}
                                 camera frames travel as raw (H, W, 3) uint8: 21 KB at 84 x 84
                                 {"type": "reset", "id": int, "seed": int}
    server -> client             {"type": "actions", "id": int, "actions": (H, A) float32, "infer_ms": float}
                                 {"type": "ok", "id": int} | {"type": "error", "id": int, "message": str}
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import IO, Any

import msgpack
import numpy as np

from datamil.errors import DatamilError

_ND = "__ndarray__"
_SAFE_KINDS = "biuf"  # bool, int, uint, float: object arrays are refused, so nothing runs code on decode


def _default(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        if value.dtype.kind not in _SAFE_KINDS:
            raise DatamilError(f"cannot send a numpy array of dtype {value.dtype}; use numeric arrays")
        array = np.ascontiguousarray(value)
        return {
            _ND: True,
            "dtype": array.dtype.newbyteorder("<").str,
            "shape": list(array.shape),
            "data": array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes(),
        }
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"cannot encode {type(value).__name__}")


def _object_hook(obj: dict) -> Any:
    if obj.get(_ND) is True:
        dtype = np.dtype(obj["dtype"])
        if dtype.kind not in _SAFE_KINDS:
            raise DatamilError(f"refusing an array of dtype {dtype} from the network")
        return np.frombuffer(obj["data"], dtype=dtype).reshape(obj["shape"])
    return obj


def pack(message: dict) -> bytes:
    """Encode one message; numpy arrays and scalars anywhere inside are supported."""
    return msgpack.packb(message, default=_default, use_bin_type=True)


def unpack(data: bytes) -> dict:
    """Decode one message; arrays come back read-only (views of the received bytes)."""
    message = msgpack.unpackb(data, object_hook=_object_hook, raw=False)
    if not isinstance(message, dict) or "type" not in message:
        raise DatamilError("malformed policy-server message (expected a map with a 'type')")
    return message


def unpack_stream(file: IO[bytes]) -> Iterator[dict]:
    """Messages appended one after another to a file (a recording journal); stops quietly at a torn
    last record, which is what a crash mid-write leaves."""
    unpacker = msgpack.Unpacker(file, object_hook=_object_hook, raw=False, max_buffer_size=2**31 - 1)
    try:
        yield from unpacker
    except (ValueError, msgpack.UnpackException):
        return

"""Where torch runs: the `device` setting of every app, resolved in one place.

`auto` is CUDA when torch sees a GPU, else the CPU. On the CPU every stage runs exactly the code it ran
before devices existed (same ops, same order, same numbers); on CUDA parameters, optimizer state, the
proxies' training pools and the estimators' buffers live on the GPU, and per-step batches are gathered
into pinned host memory and copied without blocking.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from datamil.errors import DatamilError

DEVICE_NAMES = "auto, cpu, cuda or cuda:<index>"

__all__ = ["DEVICE_NAMES", "gather_to", "host_to", "module_device", "resolve_device", "tree_to"]


def resolve_device(name: str | torch.device | None = "auto") -> torch.device:
    """The torch.device of a `device` setting: auto (CUDA when available, else CPU), cpu, cuda, cuda:<i>.

    A torch.device is returned as it is (library callers may pass e.g. `meta`). An unknown name, or CUDA
    where torch sees none, is a one-line DatamilError.
    """
    if isinstance(name, torch.device):
        return name
    text = "auto" if name is None else str(name).strip().lower()
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise DatamilError(f"unknown device {name!r}; use {DEVICE_NAMES}")
    if device.type == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise DatamilError(
            f"device={text} but torch sees no CUDA GPU here (a CPU build of torch, or no GPU/driver); "
            "use device=auto or device=cpu"
        )
    if device.index is not None and device.index >= torch.cuda.device_count():
        raise DatamilError(
            f"device={text} but torch sees {torch.cuda.device_count()} CUDA GPU(s); use cuda:0 .. "
            f"cuda:{torch.cuda.device_count() - 1}"
        )
    return device


def module_device(module: nn.Module) -> torch.device:
    """The device of a module's first parameter (or buffer); the CPU for a module with neither."""
    for tensor in module.parameters():
        return tensor.device
    for tensor in module.buffers():
        return tensor.device
    return torch.device("cpu")


def tree_to(tree: dict, device: torch.device) -> dict:
    """A nested dict of tensors (params, optimizer state) on `device`; tensors already there are kept."""
    return {k: tree_to(v, device) if isinstance(v, dict) else v.to(device) for k, v in tree.items()}


def gather_to(source: Tensor, rows: Tensor, device: torch.device) -> Tensor:
    """source[rows] on `device`: on the CPU a plain index_select; elsewhere the rows are gathered into
    pinned host memory and copied without blocking, so the host runs ahead to the next step."""
    if device.type == "cpu":
        return source.index_select(0, rows)
    if device.type != "cuda":
        return source.index_select(0, rows).to(device)
    pinned = torch.empty((len(rows), *source.shape[1:]), dtype=source.dtype, pin_memory=True)
    return torch.index_select(source, 0, rows, out=pinned).to(device, non_blocking=True)


def host_to(tensor: Tensor, device: torch.device) -> Tensor:
    """A host tensor on `device`: itself on the CPU; on a GPU copied through pinned memory without
    blocking (small per-step index tensors, e.g. a proxy step's batch rows)."""
    if device.type == "cpu":
        return tensor
    if device.type != "cuda":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)

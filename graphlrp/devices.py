"""Devices: one name for each, whatever the user writes.

A tensor on ``cuda:0`` reports ``torch.device('cuda', 0)``, while a user writes ``'cuda'``:
:func:`resolve` gives both the same name, so that moving a graph to the device it is on copies
nothing. :func:`check_available` refuses a device this machine does not have, saying which it has.
"""
from __future__ import annotations

import torch

from .errors import DeviceError


def resolve(device: torch.device | str) -> torch.device:
    """``device`` with its index made explicit: ``'cuda'`` is the current CUDA device (``cuda:0``
    unless changed), as the tensors put there report it."""
    device = torch.device(device)
    if device.index is None and device.type == "cuda" and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return device


def same_device(a: torch.device | str, b: torch.device | str) -> bool:
    """Whether ``a`` and ``b`` name one device (``'cuda'`` and ``'cuda:0'`` do, by default)."""
    return resolve(a) == resolve(b)


def check_available(device: torch.device | str) -> torch.device:
    """``device`` (:func:`resolve` d) if this machine has it; else raise :class:`~graphlrp.errors.DeviceError`
    naming what is available.

    Accepted: ``'cpu'``, ``'cuda'`` or ``'cuda:N'`` where torch sees a GPU ``N``, ``'mps'`` where
    it is built; ``'meta'`` and other types hold no data to explain.
    """
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise DeviceError(f"{device!r} is not a device; use 'cpu', 'cuda', 'cuda:N' or 'mps'") from error
    if parsed.type == "cpu":
        return parsed
    if parsed.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise DeviceError(f"device {str(device)!r} is not available: torch {torch.__version__} sees no CUDA GPU "
                              f"here ({'no CUDA in this build' if torch.version.cuda is None else 'no driver or no GPU'}); "
                              "use 'cpu'")
        if parsed.index is not None and parsed.index >= count:
            raise DeviceError(f"device {str(device)!r} is not available: torch sees {count} CUDA GPU(s), "
                              f"cuda:0..cuda:{count - 1}")
        return resolve(parsed)
    if parsed.type == "mps" and torch.backends.mps.is_available():
        return parsed
    raise DeviceError(f"device {str(device)!r} is not available here; use 'cpu'"
                      + (" or 'cuda'" if torch.cuda.is_available() else ""))


def held_tensors(obj: object) -> list[torch.Tensor]:
    """Every tensor reachable from ``obj`` through graphlrp objects' attributes, dicts, lists and
    tuples (a graph's levels, blocks, inner blocks and caches), each once: what must follow a
    graph to its device."""
    found: list[torch.Tensor] = []
    seen: set[int] = set()
    pending = [obj]
    while pending:
        item = pending.pop()
        if id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, torch.Tensor):
            found.append(item)
        elif isinstance(item, dict):
            pending.extend(item.values())
        elif isinstance(item, (list, tuple)):
            pending.extend(item)
        elif type(item).__module__.startswith("graphlrp"):
            pending.extend(_attributes(item))
    return found


def _attributes(obj: object) -> list[object]:
    values = list(vars(obj).values()) if hasattr(obj, "__dict__") else []
    slots = [name for cls in type(obj).__mro__ for name in getattr(cls, "__slots__", ())]
    return values + [getattr(obj, name) for name in slots if hasattr(obj, name)]

"""Devices: one name for each, whatever the user writes.

A tensor on ``cuda:0`` reports ``torch.device('cuda', 0)``, while a user writes ``'cuda'``:
:func:`resolve` gives both the same name, so that moving a graph to the device it is on copies
nothing.
"""
from __future__ import annotations

import torch


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

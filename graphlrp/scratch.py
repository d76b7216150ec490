"""Work buffers reused across products, levels and calls.

A product with transformed weights (``W⁺ a``) writes the transformed weights panel by panel into
one buffer instead of allocating them: a fresh allocation of a megabyte costs page faults on every
call, a reused buffer stays in the caches. Buffers are kept per thread, device and dtype, so that
explanations running in several threads never share one.
"""
from __future__ import annotations

import threading

import torch
from torch import Tensor

_buffers = threading.local()


def scratch(numel: int, like: Tensor) -> Tensor:
    """A 1-D buffer of ``numel`` elements on ``like``'s device and of its dtype, contents undefined.

    The same memory is handed out again by the next call in this thread with the same device and
    dtype, so a caller must be done with it before it asks again. It grows to the largest size
    asked for and is kept until the thread ends.
    """
    pool: dict[tuple[torch.device, torch.dtype], Tensor] = getattr(_buffers, "pool", None) or {}
    _buffers.pool = pool
    key = (like.device, like.dtype)
    buffer = pool.get(key)
    if buffer is None or buffer.numel() < numel:
        buffer = pool[key] = like.new_empty(numel)
    return buffer[:numel]

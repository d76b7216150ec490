"""Fused CPU kernels, compiled by numba when it is installed (``pip install 'graphlrp[fast]'``).

torch's eager ops make an edge message ``x[src] · w · s[dst]`` in four passes over the edges
(two gathers, two products) at well under the memory bandwidth; one fused, parallel loop reads
each edge's data once. Results are bit for bit those of the torch ops (the same products in the
same order). Without numba, or for tensors that are not on the CPU, callers use torch's ops.

:func:`disabled` switches the kernels off inside a ``with`` block (the tests compare both paths).
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import Tensor

try:  # optional accelerator
    import numba as _numba
except ImportError:  # pragma: no cover - depends on the environment
    _numba = None

_enabled = _numba is not None

if _numba is not None:

    @_numba.njit(parallel=True, cache=True)
    def _edge_messages(x, src, weight, s, dst, out):  # pragma: no cover - compiled
        for e in _numba.prange(out.shape[0]):
            out[e] = x[src[e]] * weight[e] * s[dst[e]]


def available() -> bool:
    """Whether the compiled kernels are installed and switched on."""
    return _enabled


@contextmanager
def disabled() -> Iterator[None]:
    """Use torch's ops instead of the compiled kernels inside a ``with`` block."""
    global _enabled
    previous = _enabled
    _enabled = False
    try:
        yield
    finally:
        _enabled = previous


def edge_messages_into(x: Tensor, src: Tensor, weight: Tensor, s: Tensor, dst: Tensor, out: Tensor) -> bool:
    """``out[e] = x[src[e]] · weight[e] · s[dst[e]]`` for 1-D tensors, if a compiled kernel applies.

    Returns ``False`` (writing nothing) when it does not: kernels off or not installed, a tensor
    not on the CPU or not contiguous, or mixed floating dtypes.
    """
    tensors = (x, src, weight, s, dst, out)
    if not _enabled or any(t.device.type != "cpu" or not t.is_contiguous() or t.requires_grad for t in tensors):
        return False
    if not (x.dtype == weight.dtype == s.dtype == out.dtype) or x.dtype not in (torch.float32, torch.float64):
        return False
    if len(src) != len(out) or len(dst) != len(out) or len(weight) != len(out):
        raise ValueError(f"edge arrays differ in length: {len(src)}, {len(dst)}, {len(weight)}, {len(out)}")
    _edge_messages(x.numpy(), src.numpy(), weight.numpy(), s.numpy(), dst.numpy(), out.numpy())
    return True

"""Fused CPU kernels, compiled by numba when it is installed (``pip install 'graphlrp[fast]'``).

torch's eager ops make an edge message ``x[src] · w · s[dst]`` in four passes over the edges
(two gathers, two products) at well under the memory bandwidth; one fused, parallel loop reads
each edge's data once. A quotient ``R / (z ± ε)`` with the signed stabilizer is five torch
passes (the sign as a mask, its scaling, the sum, the division) and one fused loop here. Results
are bit for bit those of the torch ops (the same operations in the same order and precision).
A path search (:func:`graphlrp.analysis.top_paths`) scores a run's grid of edges in one loop per
pass (:func:`best_extensions`, :func:`path_passes`) where torch makes a dozen float64 temporaries.
Without numba, or for tensors that are not on the CPU, callers use torch's ops.

:func:`disabled` switches the kernels off inside a ``with`` block (the tests compare both paths).
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch import Tensor

from .errors import InputError

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

    @_numba.njit(parallel=True, cache=True)
    def _signed_quotient(relevance, denominator, epsilon, forward, sign, out):  # pragma: no cover - compiled
        # sign 0 serves every node; ±1 the nodes where forward has that sign (1 · R is R exactly)
        zero = relevance.dtype.type(0)
        one = relevance.dtype.type(1)
        for i in _numba.prange(out.shape[0]):
            for j in range(out.shape[1]):
                z = denominator[i, j]
                served = one if sign == 0 or forward[i, j] * sign > 0 else zero
                out[i, j] = served * relevance[i, j] / (z + (epsilon if z >= 0 else -epsilon))


    @_numba.njit(cache=True)
    def _histogram(bits, sign_mask, mantissa_bits, bin_shift, half, counts, high, low):  # pragma: no cover - compiled
        # per value: its bin and integer mantissa, counted and summed; returns how many values are
        # NaN, infinite or negative (-0.0 counts as 0.0)
        magnitude_mask = ~sign_mask
        fraction_mask = (1 << mantissa_bits) - 1
        top = magnitude_mask >> mantissa_bits  # the biased exponent of inf and NaN
        half_mask = (1 << half) - 1
        bad = 0
        for i in range(bits.shape[0]):
            b = bits[i]
            if b & sign_mask:
                if b & magnitude_mask:
                    bad += 1
                b = b & magnitude_mask
            biased = b >> mantissa_bits
            if biased == top:
                bad += 1
            mantissa = b & fraction_mask
            if biased > 0:
                mantissa |= 1 << mantissa_bits
            k = b >> bin_shift
            counts[k] += 1
            if half:
                high[k] += mantissa >> half
                low[k] += mantissa & half_mask
            else:
                high[k] += mantissa
        return bad


    @_numba.njit(inline="always")
    def _path_step(message, relevance, product):  # pragma: no cover - compiled
        # analysis._steps for one edge: |m / R| (0 where R = 0) or |m|, in float64
        wide = _numba.float64(message)
        if not product:
            return abs(wide)
        return abs(wide / relevance) if relevance != 0 else 0.0

    @_numba.njit(inline="always")
    def _path_extend(value, by, product):  # pragma: no cover - compiled
        # analysis._extend for one value: value ⊗ by, -inf where by is -inf (or NaN)
        if not by > -np.inf:
            return -np.inf
        return value * by if product else value + by

    @_numba.njit(parallel=True, cache=True)
    def _best_extensions(messages, relevance, prefix, valid, holes, product, out):  # pragma: no cover - compiled
        rows, width = messages.shape[1], messages.shape[2]
        for row in _numba.prange(messages.shape[0] * rows):
            a, b = row // rows, row % rows
            best = -np.inf
            for e in range(width):
                if holes and not valid[a, b, e]:
                    continue
                value = _path_extend(_path_step(messages[a, b, e], relevance[a, b, e], product), prefix[a, b, e],
                                     product)
                if value > best or value != value:  # torch's amax: NaN wins
                    best = value
                if best != best:
                    break
            out[a, b] = best

    @_numba.njit(parallel=True, cache=True)
    def _path_passes(messages, relevance, ahead, worst, prefix, valid, holes, product, bound,
                     out):  # pragma: no cover - compiled
        rows, width = messages.shape[1], messages.shape[2]
        for row in _numba.prange(messages.shape[0] * rows):
            a, b = row // rows, row % rows
            for e in range(width):
                passes = not holes or valid[a, b, e]
                if passes:
                    best = _path_extend(_path_step(messages[a, b, e], relevance[a, b, e], product), ahead[a, b, e],
                                        product)
                    passes = best > worst[a, b, e] and _path_extend(best, prefix[a, b, e], product) >= bound
                out[a, b, e] = passes


def _launch(kernel: Callable[..., None], *arrays: Any) -> None:
    """Run a compiled kernel on torch's intra-op thread count, and leave that count as it was.

    numba's OpenMP threading layer shares the process's OpenMP runtime with torch: starting it sets
    the runtime's thread count to numba's default (every core), which silently undoes a
    ``torch.set_num_threads`` (one thread per process under ``torchrun``, say). Each launch first
    gives numba torch's count and puts torch's back if the launch changed it.
    """
    threads = torch.get_num_threads()
    if _numba.get_num_threads() != min(threads, _numba.config.NUMBA_NUM_THREADS):
        _numba.set_num_threads(min(threads, _numba.config.NUMBA_NUM_THREADS))
    kernel(*arrays)
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


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
        raise InputError(f"edge arrays differ in length: {len(src)}, {len(dst)}, {len(weight)}, {len(out)}")
    _launch(_edge_messages, x.numpy(), src.numpy(), weight.numpy(), s.numpy(), dst.numpy(), out.numpy())
    return True


#: tensors with fewer elements take torch's ops: below this size the compiled loop saves less than
#: its call costs (the crossover lies between 1 × 1024 and 16 × 1024 elements; the batch-1 and
#: batch-64 MLP cases of ``scripts/bench`` measure both sides)
COMPILED_QUOTIENT_FROM = 16384


def signed_quotient(relevance: Tensor, denominator: Tensor, epsilon: float, served: str = "all",
                    forward: Tensor | None = None) -> Tensor | None:
    """``R / (z + ε·s(z))`` with ``s(z) = +1`` for ``z >= 0``, as a new tensor in ``denominator``'s
    layout, if a compiled kernel applies (else ``None``, computing nothing): numba is installed and
    on, the tensors are on the CPU and have at least ``COMPILED_QUOTIENT_FROM`` elements.

    ``served='positive'`` (``'negative'``) multiplies ``R`` by 1 where ``forward > 0`` (``< 0``) and
    by 0 elsewhere first, as the γ rule's groups do. All tensors are ``(B, n)`` of one shape.
    """
    if not _enabled or denominator.numel() < COMPILED_QUOTIENT_FROM:
        return None
    forward = denominator if forward is None else forward  # read only when served != 'all'
    tensors = (relevance, denominator, forward)
    if denominator.dim() != 2 or any(t.device.type != "cpu" or t.requires_grad or t.shape != denominator.shape for t in tensors):
        return None
    if not all(t.dtype == denominator.dtype for t in tensors) or denominator.dtype not in (torch.float32, torch.float64):
        return None
    out = torch.empty_like(denominator)
    # the loops run along unit-stride rows: node-major tensors (the transpose is row-major) transposed
    node_major = out.stride(0) == 1 and out.stride(1) != 1
    arrays = [(t.T if node_major else t) for t in (*tensors, out)]
    if any(a.dim() != 2 or (a.shape[1] > 1 and a.stride(1) != 1) for a in arrays):
        return None
    arrays = [a.numpy() for a in arrays]
    sign = {"all": 0, "positive": 1, "negative": -1}[served]
    relevance_array, denominator_array, forward_array, out_array = arrays
    _launch(_signed_quotient, relevance_array, denominator_array, relevance_array.dtype.type(epsilon), forward_array,
            sign, out_array)
    return out



def histogram_add(values: Tensor, counts: Tensor, high: Tensor, low: Tensor | None, mantissa_bits: int,
                  bin_shift: int, half: int) -> int | None:
    """Count and sum the integer mantissas of ``values`` (1-D float32 or float64) by bins of their
    leading bits (:class:`graphlrp.streaming.Histogram`, whose int64 tables these are; ``low``
    and ``half`` split float64 mantissas), in one serial pass, if a compiled kernel applies.

    Returns how many values are NaN, infinite or negative (``-0.0`` is ``0.0``), or ``None``
    (computing nothing) when the kernel does not apply: kernels off or not installed, a tensor
    not on the CPU, or ``values`` not contiguous.
    """
    if not _enabled or values.device.type != "cpu" or not values.is_contiguous() or values.requires_grad:
        return None
    int_dtype = {torch.float32: torch.int32, torch.float64: torch.int64}.get(values.dtype)
    if int_dtype is None:
        return None
    bits = values.view(int_dtype).numpy()
    sign_mask = bits.dtype.type(-(1 << (8 * values.element_size() - 1)))
    tables = (counts.numpy(), high.numpy(), (low if low is not None else high).numpy())
    return int(_histogram(bits, sign_mask, mantissa_bits, bin_shift, half if low is not None else 0, *tables))


_GRID_DTYPES = (torch.float32, torch.float64, torch.bool)


def _grid_arrays(grid: tuple[int, ...], *tensors: Tensor) -> list[Any] | None:
    """``tensors`` broadcast to ``grid`` as three-dimensional numpy views (no copies), or ``None``
    when a compiled kernel does not apply (kernels off, a tensor not on the CPU, with a gradient,
    or of a dtype other than float32, float64 and bool)."""
    if not _enabled or any(t.device.type != "cpu" or t.requires_grad or t.dtype not in _GRID_DTYPES for t in tensors):
        return None
    shape = (1,) * (3 - len(grid)) + tuple(grid)
    return [t.expand(grid).reshape(shape).numpy() for t in tensors]


def best_extensions(grid: tuple[int, ...], messages: Tensor, relevance: Tensor, prefix: Tensor,
                    valid: Tensor | None, product: bool) -> Tensor | None:
    """Per row of a run's ``grid`` (its last axis), the best path score extended along an edge:
    the maximum over the row's edges of ``_extend(_steps(m, R), prefix)`` of
    :mod:`graphlrp.analysis` (-inf for a row without edges), a float64 tensor ``grid[:-1]``, if
    a compiled kernel applies (else ``None``). ``messages`` is ``grid``-shaped; ``relevance``
    (of each edge's destination), ``prefix`` (float64, of its source) and ``valid`` broadcast
    to it. Bit for bit torch's ops, NaN included."""
    arrays = _grid_arrays(grid, messages, relevance, prefix, *(() if valid is None else (valid,)))
    if arrays is None:
        return None
    out = torch.empty(grid[:-1], dtype=torch.float64)
    holes = valid is not None
    _launch(_best_extensions, *arrays[:3], arrays[3] if holes else np.ones((1, 1, 1), dtype=np.bool_), holes,
            product, out.numpy().reshape(arrays[0].shape[:2]))
    return out


def path_passes(grid: tuple[int, ...], messages: Tensor, relevance: Tensor, ahead: Tensor, worst: Tensor,
                prefix: Tensor, valid: Tensor | None, product: bool, bound: float) -> Tensor | None:
    """Which edges of a run's ``grid`` a path search relaxes, a boolean ``grid``-shaped tensor, if
    a compiled kernel applies (else ``None``): valid edges whose ``best = _extend(_steps(m, R),
    ahead)`` (:mod:`graphlrp.analysis`) exceeds ``worst`` and ``_extend(best, prefix) >= bound``;
    ``ahead`` and ``relevance`` are the destination's, ``worst`` and ``prefix`` the source's
    (float64), all broadcasting to ``grid``. Bit for bit torch's ops."""
    arrays = _grid_arrays(grid, messages, relevance, ahead, worst, prefix, *(() if valid is None else (valid,)))
    if arrays is None:
        return None
    out = torch.empty(grid, dtype=torch.bool)
    holes = valid is not None
    _launch(_path_passes, *arrays[:5], arrays[5] if holes else np.ones((1, 1, 1), dtype=np.bool_), holes, product,
            bound, out.numpy().reshape(arrays[0].shape))
    return out


"""Every index reduction graphlrp performs, in one place.

Two backends compute the same numbers:

* ``'torch'``: native ``index_add_`` / ``scatter_reduce_`` on a ``(nodes, batch)`` layout (on a CPU
  measured faster than torch_scatter, whose CPU kernels are serial);
* ``'torch_scatter'``: torch_scatter's kernels (faster on CUDA).

``'auto'`` (the default) takes torch_scatter on CUDA when it is installed with its CUDA kernels
(a build made on a machine without a GPU has none), native torch otherwise, and native torch
whenever torch's deterministic algorithms are on (:func:`graphlrp.deterministic`): its
``index_add_`` and one-dimensional ``scatter_add_`` are then deterministic on CUDA, where
torch_scatter's are atomic. Select one with :func:`set_backend` or the :func:`backend` context
manager; ``'torch_scatter'`` on a CUDA tensor with a build without CUDA kernels is refused.
"""
from __future__ import annotations

import functools
from contextlib import contextmanager
from typing import Iterator

import torch
from torch import Tensor

from .errors import DeviceError, InputError

try:  # optional accelerator
    import torch_scatter as _torch_scatter
except ImportError:  # pragma: no cover - depends on the environment
    _torch_scatter = None

_BACKENDS = ("auto", "torch", "torch_scatter")
_selected = "auto"


def available_backends() -> tuple[str, ...]:
    """The backends usable here (``'torch_scatter'`` only when it is installed)."""
    return ("torch", "torch_scatter") if _torch_scatter is not None else ("torch",)


def set_backend(name: str) -> None:
    """Select the reduction backend: ``'auto'``, ``'torch'`` or ``'torch_scatter'``."""
    global _selected
    if name not in _BACKENDS:
        raise InputError(f"unknown reduction backend {name!r}; choose one of {_BACKENDS}")
    if name == "torch_scatter" and _torch_scatter is None:
        raise InputError("backend 'torch_scatter' needs torch_scatter: pip install 'graphlrp[scatter]'")
    _selected = name


@contextmanager
def backend(name: str) -> Iterator[None]:
    """Use backend ``name`` inside a ``with`` block."""
    previous = _selected
    set_backend(name)
    try:
        yield
    finally:
        set_backend(previous)


def has_cuda_kernels() -> bool:
    """Whether the installed torch_scatter was built with CUDA kernels."""
    return _torch_scatter is not None and torch.ops.torch_scatter.cuda_version() != -1


def _use_torch_scatter(device: torch.device) -> bool:
    if _selected == "auto":
        return device.type == "cuda" and _cuda_kernels() and not torch.are_deterministic_algorithms_enabled()
    if _selected == "torch_scatter" and device.type == "cuda" and not _cuda_kernels():
        raise DeviceError("reduction backend 'torch_scatter' was selected for a CUDA tensor, but the installed "
                           "torch_scatter was built without CUDA kernels; select 'torch' or 'auto', or rebuild it "
                           "on a machine with a GPU and nvcc (FORCE_CUDA=1 pip install torch_scatter)")
    return _selected == "torch_scatter"


def backend_for(device: torch.device | str) -> str:
    """The backend the reductions of a tensor on ``device`` use now: ``'torch'`` or ``'torch_scatter'``.

    Raises :class:`~graphlrp.errors.DeviceError` where they would be refused.
    """
    return "torch_scatter" if _use_torch_scatter(torch.device(device)) else "torch"


@functools.cache
def _cuda_kernels() -> bool:
    """:func:`has_cuda_kernels`, asked once."""
    return has_cuda_kernels()


def scatter_add_(out: Tensor, index: Tensor, values: Tensor) -> Tensor:
    """``out[index[e]] += values[e]`` along dim 0, in place; returns ``out``."""
    if _use_torch_scatter(out.device):
        return _torch_scatter.scatter(values, index.long(), dim=0, out=out, reduce="sum")
    if values.dim() == 1:  # measured faster than index_add_ for one value per index
        return out.scatter_add_(0, index.long(), values)
    return out.index_add_(0, index, values)


def scatter_add_last_(out: Tensor, index: Tensor, values: Tensor) -> Tensor:
    """``out.scatter_add_(-1, index, values)`` for a contiguous ``out``; returns ``out``.

    On CUDA in torch's deterministic mode, where ``scatter_add_`` has a deterministic kernel in one
    dimension only, computed as one 1-D scatter of the flattened tensors (:func:`flat_scatter_add_`).
    """
    if out.device.type == "cuda" and out.dim() > 1 and torch.are_deterministic_algorithms_enabled():
        return flat_scatter_add_(out, index, values)
    return out.scatter_add_(out.dim() - 1, index, values)


def flat_scatter_add_(out: Tensor, index: Tensor, values: Tensor) -> Tensor:
    """``out.scatter_add_(-1, index, values)`` as a 1-D scatter: each row's indices offset by the
    row's start in the flattened, contiguous ``out``."""
    rows = torch.arange(index[..., 0].numel(), device=out.device).reshape(*index.shape[:-1], 1)
    out.view(-1).scatter_add_(0, (index + rows * out.shape[-1]).reshape(-1), values.reshape(-1))
    return out


def scatter_max(values: Tensor, index: Tensor, size: int) -> tuple[Tensor, Tensor]:
    """Per group maximum of 1-D ``values`` and the position (into ``values``) of one maximum.

    Groups without members get ``-inf`` and position ``-1``.
    """
    index = index.long()
    if _use_torch_scatter(values.device):
        fill = values.new_full((size,), float("-inf"))
        best, arg = _torch_scatter.scatter_max(values, index, dim=0, out=fill)
        arg = torch.where(arg >= len(values), torch.full_like(arg, -1), arg)
        return best, arg
    best = values.new_full((size,), float("-inf")).scatter_reduce_(0, index, values, reduce="amax")
    is_best = values == best[index]
    positions = torch.arange(len(values), device=values.device)
    candidate = torch.where(is_best, positions, torch.full_like(positions, -1))
    arg = torch.full((size,), -1, dtype=torch.long, device=values.device).scatter_reduce_(
        0, index, candidate, reduce="amax"
    )
    return best, arg

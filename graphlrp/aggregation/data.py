"""A data set as batches of inputs with the class to explain for every sample."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator

import torch
from torch import Tensor

from ..errors import ArgumentTypeError, InputError
from ..samples import is_index as _is_index
from ..graph import Graph

#: target values that are not class indices
TARGET_WORDS = ("predicted", "label")


@dataclass(frozen=True)
class Batch:
    """Samples ``x`` of the data set starting at position ``start``, and what to explain in them."""

    x: Tensor
    target: object  # an int, a (B,) tensor, "predicted", or the batch's labels for "label"
    start: int


def check_target(target: object) -> object:
    """``target`` as given (an int or ``'predicted'``/``'label'``), or a 1-D integer tensor of per-sample classes."""
    if isinstance(target, str):
        if target not in TARGET_WORDS:
            raise InputError(f"target must be a class index, a tensor of them, 'predicted' or 'label', got {target!r}")
        return target
    if _is_index(target):
        return int(target)
    if target is None or isinstance(target, (bytes, float)):
        raise ArgumentTypeError(f"target must be an int, a sequence of ints, an integer tensor, 'predicted' or "
                                f"'label', got {target!r}")
    try:
        values = torch.as_tensor(target).reshape(-1)
    except (TypeError, ValueError, RuntimeError, OverflowError):
        raise ArgumentTypeError(f"target must be an int, a sequence of ints, an integer tensor, 'predicted' or "
                                f"'label', got {target!r}") from None
    if values.dtype == torch.bool or values.is_floating_point() or values.is_complex():
        raise ArgumentTypeError(f"target must hold ints (class indices), got dtype {values.dtype}")
    return values


def total_samples(data: object) -> int | None:
    """Samples in ``data``, when it says (a tensor, a sized data set, or a ``DataLoader`` over one)."""
    if isinstance(data, Tensor):
        return len(data)
    sized = data if isinstance(data, torch.utils.data.Dataset) else getattr(data, "dataset", None)
    try:
        return len(sized) if sized is not None else None
    except TypeError:
        return None


def check_samples(data: Tensor, target: object) -> None:
    """Refuse a tensor of samples that holds none, or ``target`` that does not fit it."""
    if target == "label":
        raise InputError("target='label' needs data that yields (x, y) batches; give per-sample classes as target=")
    if data.dim() == 0 or len(data) == 0:
        raise InputError("data holds no samples")
    if isinstance(target, Tensor) and target.numel() not in (1, len(data)):
        raise InputError(f"target has {target.numel()} entries for {len(data)} samples; give one, or one per sample")


def batches(data: object, target: object, batch_size: int) -> Iterator[Batch]:
    """The samples of ``data`` in batches: a tensor cut into ``batch_size`` samples; any other
    iterable's own batches, each ``(x, y)`` (``y`` used by ``target='label'``) or a tensor ``x``."""
    if isinstance(data, Tensor):
        check_samples(data, target)
        for start in range(0, len(data), batch_size):
            end = min(start + batch_size, len(data))
            yield Batch(data[start:end], per_sample(target, start, end), start)
        return
    if not isinstance(data, Iterable):
        raise ArgumentTypeError(f"data must be a tensor of samples or an iterable of (x, y) batches, "
                                f"got {type(data).__name__}")
    position = 0
    for item in data:
        x, labels = split_item(item, target)
        yield Batch(x, labels if target == "label" else per_sample(target, position, position + len(x)), position)
        position += len(x)


def split_item(item: object, target: object) -> tuple[Tensor, Tensor | None]:
    """``(x, y)`` of one batch: a tensor ``x`` or an ``(x, y)`` pair (``y`` kept for ``target='label'``)."""
    if isinstance(item, Tensor):
        if target == "label":
            raise InputError("target='label' needs data that yields (x, y) batches, got bare tensors")
        return item, None
    if isinstance(item, (tuple, list)) and len(item) == 2 and isinstance(item[0], Tensor):
        x, y = item
        if target == "label":
            labels = check_target(y)
            if not isinstance(labels, Tensor) or labels.numel() != len(x):
                raise InputError(f"a batch of {len(x)} samples has labels {y!r}; target='label' needs one per sample")
            return x, labels
        return x, None
    raise ArgumentTypeError(f"data must yield tensors or (x, y) pairs of tensors, got {type(item).__name__}")


def per_sample(target: object, start: int, end: int) -> object:
    """What to explain in samples ``start..end`` of the data set: a slice of per-sample classes, or ``target``."""
    if isinstance(target, Tensor) and target.numel() > 1:
        if target.numel() < end:
            raise InputError(f"target has {target.numel()} entries, fewer than the {end} samples of data")
        return target[start:end]
    if isinstance(target, Tensor):
        return int(target.reshape(()))
    return target


def classes_of(graph: Graph, x: Tensor, target: object) -> Tensor:
    """The class to explain for every sample of ``x``, ``(B,)`` int64 (``'predicted'``: the
    largest output, one forward pass)."""
    if target == "predicted":
        return graph(x).reshape(len(x), -1).argmax(1)
    if isinstance(target, Tensor):
        return target.to(device=x.device, dtype=torch.long)
    return torch.full((len(x),), int(target), dtype=torch.long, device=x.device)

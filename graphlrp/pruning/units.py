"""What can be pruned in a model: its layers with weights and, per granularity, their units.

A *unit* is what one score ranks and one mask entry removes:

* ``"weight"``: every weight of every ``nn.Linear`` and ``nn.Conv1d/2d/3d`` (scores shaped like
  the weight);
* ``"neuron"``: every output of an ``nn.Linear`` but the model's last one, whose outputs are the
  classes (as Hatefi et al.'s code leaves it out), scores ``(out_features,)``;
* ``"channel"``: every output channel (filter) of a convolution, scores ``(out_channels,)``.

Layers are named by their path in ``model.named_modules()``; a pruned layer
(``torch.nn.utils.prune``) is read through its effective weight ``weight_orig * weight_mask``.
"""
from __future__ import annotations

import torch
import torch.nn as nn
from torch import Tensor

from ..errors import ArgumentTypeError, InputError

GRANULARITIES = ("weight", "neuron", "channel")

_CONV = nn.modules.conv._ConvNd


def check_granularity(granularity: object) -> str:
    """``granularity`` if it is one of :data:`GRANULARITIES`, else :class:`InputError`."""
    if not isinstance(granularity, str) or granularity not in GRANULARITIES:
        raise InputError(f"granularity must be one of {', '.join(map(repr, GRANULARITIES))}, got {granularity!r}")
    return granularity


def check_model(model: object) -> nn.Module:
    """``model`` if it is a torch module, else :class:`ArgumentTypeError`."""
    if not isinstance(model, nn.Module):
        raise ArgumentTypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    return model


def prunable(model: nn.Module, granularity: str) -> dict[str, nn.Module]:
    """The layers of ``model`` whose units of ``granularity`` can be pruned, by module path.

    Raises :class:`InputError` for a model without any (naming what it would need).
    """
    check_granularity(granularity)
    linear = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    if granularity == "weight":
        found = {name: m for name, m in model.named_modules() if isinstance(m, (nn.Linear, _CONV))}
    elif granularity == "neuron":
        found = dict(linear[:-1])
    else:
        found = {name: m for name, m in model.named_modules() if isinstance(m, _CONV)}
    if not found:
        needs = {"weight": "an nn.Linear or convolution",
                 "neuron": "an nn.Linear before the last one (the output layer is never pruned)",
                 "channel": "a convolution (nn.Conv1d/2d/3d)"}[granularity]
        raise InputError(f"{type(model).__name__} has no layer to prune at granularity={granularity!r}: "
                         f"it needs {needs}")
    return found


def unit_shape(module: nn.Module, granularity: str) -> tuple[int, ...]:
    """The shape of one layer's scores at ``granularity``."""
    return tuple(module.weight.shape) if granularity == "weight" else (module.weight.shape[0],)


def live(module: nn.Module, granularity: str) -> Tensor:
    """Which units of ``module`` are not pruned yet (bool, shaped like its scores): a weight whose
    mask entry is one; a neuron or channel with at least one unmasked weight."""
    mask = getattr(module, "weight_mask", None)
    if mask is None:
        mask = torch.ones_like(module.weight, dtype=torch.bool)
    mask = mask.detach() != 0
    return mask if granularity == "weight" else mask.reshape(len(mask), -1).any(1)


def per_unit(values: Tensor, granularity: str) -> Tensor:
    """Per-output values ``(B, C, *positions)`` of one layer summed over positions: ``(B, C)``."""
    return values.reshape(*values.shape[:2], -1).sum(-1) if granularity == "channel" else values

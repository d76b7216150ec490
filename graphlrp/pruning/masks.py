"""``prune``: mask the lowest-scoring units of a model through ``torch.nn.utils.prune``.

The masks are ``torch.nn.utils.prune`` masks (``weight_orig`` and ``weight_mask``), so that
:func:`graphlrp.lower` sees the effective weights and no edge for a pruned one. Pruning a pruned
model composes the masks: what was pruned stays pruned, counts towards ``amount``, and is chosen
before anything else. A pruned neuron or channel has its weights and its bias masked, so that its
output is zero (a batch norm after a convolution is not masked).
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from numbers import Real

import torch
import torch.nn as nn
import torch.nn.utils.prune as torch_prune
from torch import Tensor

from ..errors import ArgumentTypeError, InputError
from .units import check_granularity, check_model, live, prunable, unit_shape

SCOPES = ("global", "layer")


def check_amount(amount: object) -> float:
    """``amount`` as a float in ``[0, 1]``."""
    if isinstance(amount, bool) or not isinstance(amount, Real):
        raise ArgumentTypeError(f"amount must be a number in [0, 1], got {amount!r} ({type(amount).__name__})")
    if not 0.0 <= float(amount) <= 1.0:
        raise InputError(f"amount must be a number in [0, 1] (the fraction of units pruned), got {amount!r}")
    return float(amount)


def check_scores(scores: object, layers: dict[str, nn.Module], granularity: str) -> dict[str, Tensor]:
    """``scores`` as float64 tensors, one per layer named, each of the layer's unit shape and finite."""
    if not isinstance(scores, Mapping) or not scores:
        raise ArgumentTypeError(f"scores must be a non-empty dict of module path to tensor, got {type(scores).__name__}")
    checked = {}
    for name, values in scores.items():
        if name not in layers:
            raise InputError(f"scores name {name!r}, which is not a layer prunable at granularity="
                             f"{granularity!r}; accepted: {', '.join(map(repr, layers))}")
        expected = unit_shape(layers[name], granularity)
        if not isinstance(values, Tensor) or tuple(values.shape) != expected:
            shape = tuple(values.shape) if isinstance(values, Tensor) else type(values).__name__
            raise InputError(f"scores[{name!r}] must be a tensor of shape {expected} at granularity="
                             f"{granularity!r}, got {shape}")
        if values.is_complex() or not torch.isfinite(values).all():
            raise InputError(f"scores[{name!r}] must be finite real numbers")
        checked[name] = values.detach().to(dtype=torch.float64, device=layers[name].weight.device)
    return checked


def prune(model: nn.Module, scores: Mapping[str, Tensor], amount: float, granularity: str = "weight",
          scope: str = "global") -> nn.Module:
    """Prune the units with the lowest scores, so that ``amount`` of them are pruned.

    Parameters
    ----------
    model : nn.Module
        Modified in place: every layer with units newly pruned gets (or composes) masks.
    scores : dict of str to Tensor
        ``{module_path: scores}`` as :func:`relevance_scores`, :func:`magnitude_scores` or
        :func:`taylor_scores` return them; layers not named are not pruned.
    amount : float
        The fraction of the units of the layers named that are pruned after the call, in
        ``[0, 1]``, counting those pruned before (which are never revived).
    granularity : {'weight', 'neuron', 'channel'}
        The units the scores rank.
    scope : {'global', 'layer'}
        Rank all layers' units together, or prune ``amount`` of every layer's units.

    Returns
    -------
    nn.Module
        ``model``.
    """
    check_model(model)
    check_granularity(granularity)
    amount = check_amount(amount)
    if not isinstance(scope, str) or scope not in SCOPES:
        raise InputError(f"scope must be one of {', '.join(map(repr, SCOPES))}, got {scope!r}")
    layers = prunable(model, granularity)
    checked = check_scores(scores, layers, granularity)
    alive = {name: live(layers[name], granularity).to(values.device) for name, values in checked.items()}
    if scope == "layer":
        keep = {name: _keep(checked[name].reshape(-1), alive[name].reshape(-1), amount).reshape(checked[name].shape)
                for name in checked}
    else:
        device = next(iter(checked.values())).device
        flat = _keep(torch.cat([v.reshape(-1).to(device) for v in checked.values()]),
                     torch.cat([a.reshape(-1).to(device) for a in alive.values()]), amount)
        keep, start = {}, 0
        for name, values in checked.items():
            keep[name] = flat[start : start + values.numel()].reshape(values.shape).to(values.device)
            start += values.numel()
    for name, kept in keep.items():
        if not torch.equal(kept, alive[name]):
            _apply(layers[name], kept, granularity)
    return model


def _keep(scores: Tensor, alive: Tensor, amount: float) -> Tensor:
    """Which units stay: all but the ``round(amount · n)`` lowest (Python's rounding, as
    ``torch.nn.utils.prune``), pruned ones counted lowest, ties broken by position."""
    pruned = round(amount * len(scores))
    ranked = torch.where(alive, scores, torch.full_like(scores, -math.inf))
    order = torch.sort(ranked, stable=True).indices
    keep = alive.clone()
    keep[order[:pruned]] = False
    return keep


def _apply(module: nn.Module, keep: Tensor, granularity: str) -> None:
    weight = module.weight
    if granularity == "weight":
        torch_prune.custom_from_mask(module, "weight", keep.to(weight.dtype))
        return
    shape = (len(keep),) + (1,) * (weight.dim() - 1)
    torch_prune.custom_from_mask(module, "weight", keep.reshape(shape).expand_as(weight).to(weight.dtype))
    if module.bias is not None:
        torch_prune.custom_from_mask(module, "bias", keep.to(module.bias.dtype))

"""The criteria relevance is compared with: weight magnitude and first-order Taylor.

* :func:`magnitude_scores`: ``|w|`` per weight; per neuron or channel the L1 norm of its
  incoming weights (Li et al., ICLR 2017), the ``weight`` criterion of Yeom et al.'s code.
* :func:`taylor_scores`: the first-order Taylor estimate of the change of the explained output
  ``y`` (the target logit) when a unit is removed (Molchanov et al., ICLR 2017): per neuron or
  channel, per sample ``|mean over positions of a · ∂y/∂a|`` at the layer's output ``a``, averaged
  over the samples; per weight ``|w · Σ_samples ∂y/∂w| / N``.

Both read pruned layers through their effective weights and score a pruned unit zero; the
gradients are taken on a copy of the model, which is never modified.
"""
from __future__ import annotations

import copy

import torch
import torch.nn as nn
from torch import Tensor

from ..aggregation.data import batches, check_target
from ..errors import InputError
from ..export import check_int
from .units import check_model, live, prunable


def magnitude_scores(model: nn.Module, granularity: str = "weight") -> dict[str, Tensor]:
    """``|w|`` of every weight, or the L1 norm of every neuron's or channel's weights, by layer.

    Parameters
    ----------
    model : nn.Module
    granularity : {'weight', 'neuron', 'channel'}

    Returns
    -------
    dict of str to Tensor
        ``{module_path: scores}`` in float64, shaped like the weight or ``(outputs,)``.
    """
    check_model(model)
    scores = {}
    for name, module in prunable(model, granularity).items():
        weights = module.weight.detach().abs().to(torch.float64)
        scores[name] = weights if granularity == "weight" else weights.reshape(len(weights), -1).sum(1)
    return scores


def taylor_scores(model: nn.Module, data: object, target: object = "label", granularity: str = "weight",
                  batch_size: int = 64) -> dict[str, Tensor]:
    """First-order Taylor scores of every weight, neuron or channel over reference samples.

    Parameters
    ----------
    model : nn.Module
        Any differentiable model (in eval mode); a copy is differentiated.
    data, target, batch_size
        As for :func:`graphlrp.pruning.relevance_scores`; ``y`` is the output of the class explained.
    granularity : {'weight', 'neuron', 'channel'}

    Returns
    -------
    dict of str to Tensor
        ``{module_path: scores}`` in float64, shaped like the weight or ``(outputs,)``.
    """
    check_model(model)
    layers = prunable(model, granularity)
    check_int("batch_size", batch_size, 1)
    target = check_target(target)
    twin = copy.deepcopy(model)
    twin_layers = dict(twin.named_modules())
    for parameter in twin.parameters():
        parameter.requires_grad_(True)
    sums = {name: torch.zeros(m.weight.shape if granularity == "weight" else len(m.weight), dtype=torch.float64,
                              device=m.weight.device) for name, m in layers.items()}
    count = 0
    for batch in batches(data, target, batch_size):
        x = batch.x.detach().clone().requires_grad_(True)
        outputs: dict[str, list[Tensor]] = {name: [] for name in layers}
        hooks = [twin_layers[name].register_forward_hook(lambda _m, _i, out, name=name: outputs[name].append(out))
                 for name in layers] if granularity != "weight" else []
        try:
            with torch.enable_grad():
                logits = twin(x).reshape(len(x), -1)
                classes = _classes(logits, batch.target)
                explained = logits.gather(1, classes[:, None]).sum()
                if granularity == "weight":
                    _add_weight_gradients(explained, twin_layers, sums)
                else:
                    _add_unit_products(explained, outputs, sums)
        finally:
            for hook in hooks:
                hook.remove()
        count += len(x)
    if count == 0:
        raise InputError("data holds no samples")
    scores = {}
    for name, module in layers.items():
        values = sums[name]
        if granularity == "weight":
            values = (module.weight.detach().to(torch.float64) * values).abs()
        scores[name] = values / count * live(module, granularity).to(values.device)
    return scores


def _classes(logits: Tensor, target: object) -> Tensor:
    if target == "predicted":
        return logits.argmax(1)
    if isinstance(target, Tensor):
        return target.to(device=logits.device, dtype=torch.long).reshape(-1).expand(len(logits))
    return torch.full((len(logits),), int(target), dtype=torch.long, device=logits.device)


def _effective(module: nn.Module) -> Tensor:
    """The tensor the gradient of a layer's effective weight flows through (``weight_orig`` of a
    pruned layer: ``w_orig · ∂y/∂w_orig = w · ∂y/∂w`` since the mask is 0 or 1)."""
    return getattr(module, "weight_orig", module.weight)


def _add_weight_gradients(explained: Tensor, layers: dict[str, nn.Module], sums: dict[str, Tensor]) -> None:
    params = [_effective(layers[name]) for name in sums]
    gradients = torch.autograd.grad(explained, params, allow_unused=True)
    for name, gradient in zip(sums, gradients):
        if gradient is not None:
            sums[name] += gradient.to(torch.float64)


def _add_unit_products(explained: Tensor, outputs: dict[str, list[Tensor]], sums: dict[str, Tensor]) -> None:
    used = [(name, out) for name, outs in outputs.items() for out in outs]
    gradients = torch.autograd.grad(explained, [out for _, out in used], allow_unused=True)
    for (name, out), gradient in zip(used, gradients):
        if gradient is None:
            continue
        product = (out * gradient).reshape(len(out), out.shape[1], -1).mean(-1)
        sums[name] += product.abs().sum(0, dtype=torch.float64)

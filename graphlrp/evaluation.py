"""graphlrp explanations for evaluation libraries: an ``explain_func`` with Quantus's signature.

Quantus metrics call ``explain_func(model=model, inputs=x_batch, targets=y_batch,
**explain_func_kwargs)`` with NumPy arrays and expect attributions of the inputs' shape::

    import quantus
    from graphlrp.evaluation import explain_func

    metric = quantus.PixelFlipping(disable_warnings=True)
    curves = metric(model=model, x_batch=x, y_batch=y, explain_func=explain_func,
                    explain_func_kwargs={"composite": "EpsilonPlus"}, softmax=False)

Nothing here imports Quantus. The model is lowered once per input shape and kept (see
:func:`lowered`) for as long as the model lives and its parameters and buffers are not modified.
"""
from __future__ import annotations

import inspect
import weakref
from typing import Callable, Hashable, Mapping

import numpy as np
import torch
import torch.nn as nn
from torch import Tensor

from . import composites, rules
from .composites import Composite
from .errors import InputError
from .explainer import explain
from .graph import Graph
from .frontends import lower
from .rules import Rule

#: the names this adapter gives registered rules and composites whose names differ (its first
#: spelling, which ``explain_func_kwargs`` written for it use); every other one keeps its registered name
SPELLINGS: dict[str, str] = {
    "alphabeta": "alpha2beta1",
    "epsilon-plus": "EpsilonPlus",
    "epsilon-plus-flat": "EpsilonPlusFlat",
    "epsilon-alpha2-beta1": "EpsilonAlpha2Beta1",
}


def _without_parameters(registered: Mapping[str, type]) -> dict[str, Callable[[], object]]:
    """The classes of ``registered`` that need no argument, by their name here (:data:`SPELLINGS`)."""
    return {SPELLINGS.get(name, name): cls for name, cls in registered.items()
            if all(p.default is not p.empty or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
                   for p in inspect.signature(cls).parameters.values())}


#: registered rules that need no parameter (:func:`graphlrp.rules.register_rule`), by name
RULES: dict[str, Callable[[], Rule]] = _without_parameters(rules.RULES)

#: registered composites that need no parameter (:func:`graphlrp.composites.register_composite`), by name
COMPOSITES: dict[str, Callable[[], Composite]] = _without_parameters(composites.COMPOSITES)

#: per model: for each lowering key, the model's state when it was lowered and the graph
_GRAPHS: "weakref.WeakKeyDictionary[nn.Module, dict[Hashable, tuple[Hashable, Graph]]]" = weakref.WeakKeyDictionary()


def explain_func(
    model: nn.Module,
    inputs: np.ndarray | Tensor,
    targets: np.ndarray | Tensor | int,
    *,
    rule: Rule | str | None = None,
    composite: Composite | str | None = None,
    block_kind: str = "auto",
    max_pool: str = "winner",
    device: str | torch.device | None = None,
) -> np.ndarray:
    """LRP input relevance of ``model`` for ``inputs``, with Quantus's ``explain_func`` signature.

    Parameters
    ----------
    model : nn.Module
        A network :func:`graphlrp.lower` can lower, in eval mode.
    inputs : ndarray or Tensor
        A batch ``(B, ...)``; converted to the dtype and device of the model's parameters.
    targets : ndarray or Tensor or int
        The class explained, one per sample or one for all; its output value is the relevance
        that is redistributed.
    rule : Rule or str, optional
        One rule for every level: a graphlrp rule or a name from :data:`RULES`.
    composite : Composite or str, optional
        A rule per level: a composite or a preset's name from :data:`COMPOSITES`. Give ``rule``
        or ``composite`` (neither: ``Epsilon()``).
    block_kind, max_pool : str
        Passed to :func:`graphlrp.lower`.
    device : str or torch.device, optional
        Accepted because Quantus adds it to the keyword arguments; the computation runs on the
        model's device.

    Returns
    -------
    ndarray
        Input relevance, shaped like ``inputs``.

    Raises
    ------
    InputError
        For an unknown rule or composite name (the message lists the known ones), or both
        ``rule`` and ``composite``.
    """
    method = {"rule": _by_name(rule, RULES, "rule"), "composite": _by_name(composite, COMPOSITES, "composite")}
    x = _as_model_input(model, inputs)
    graph = lowered(model, x, block_kind=block_kind, max_pool=max_pool)
    target = torch.as_tensor(np.asarray(targets), device=x.device).long()
    explanation = explain(graph, x, target=target, **method)
    return explanation.input_relevance.detach().cpu().numpy()


def lowered(model: nn.Module, example_input: Tensor, block_kind: str = "auto", max_pool: str = "winner") -> Graph:
    """``graphlrp.lower(model, example_input, ...)``, reused while the model is unchanged.

    A graph is kept per model (weakly: it goes when the model goes) and per per-sample input
    shape, dtype, device, ``block_kind`` and ``max_pool``. It is lowered again when any parameter
    or buffer of the model has been replaced or modified in place since (e.g. by an optimizer
    step or a randomisation test).

    Parameters
    ----------
    model : nn.Module
    example_input : Tensor
        A batch ``(B, ...)``, used for lowering when no graph is kept.
    block_kind, max_pool : str
        Passed to :func:`graphlrp.lower`.

    Returns
    -------
    Graph
    """
    key = (tuple(example_input.shape[1:]), example_input.dtype, example_input.device, block_kind, max_pool)
    state = _state(model)
    graphs = _GRAPHS.setdefault(model, {})
    kept = graphs.get(key)
    if kept is None or kept[0] != state:
        graphs[key] = (state, lower(model, example_input, block_kind=block_kind, max_pool=max_pool))
    return graphs[key][1]


def _state(model: nn.Module) -> tuple[tuple[int, int], ...]:
    """Identity and version counter of every parameter and buffer: changes with any in-place update."""
    return tuple((id(t), t._version) for t in [*model.parameters(), *model.buffers()])


def _as_model_input(model: nn.Module, inputs: np.ndarray | Tensor) -> Tensor:
    """``inputs`` as a tensor of the dtype and on the device of the model's first parameter."""
    reference = next(model.parameters(), None)
    dtype = reference.dtype if reference is not None else torch.get_default_dtype()
    device = reference.device if reference is not None else torch.device("cpu")
    return torch.as_tensor(inputs).to(device=device, dtype=dtype)


def _by_name(value: object, known: dict[str, Callable[[], object]], what: str) -> object:
    """``value`` itself (:func:`graphlrp.explain` checks it), or for a name the object :data:`RULES` /
    :data:`COMPOSITES` builds."""
    if not isinstance(value, str):
        return value
    if value not in known:
        raise InputError(f"unknown {what} {value!r}; known names: {', '.join(known)} (or pass a graphlrp {what})")
    return known[value]()

"""``relevance_scores``: how relevant every weight, neuron or channel of a model is over reference samples.

The two criteria of the LRP pruning papers differ in where the absolute value is taken:

* ``"yeom"`` (Yeom et al., "Pruning by explaining", Pattern Recognition 2021): the sum over
  samples and positions of ``|R|``; a weight's score is the sum of ``|message|`` over the edges
  that share it (all output positions of a convolution) and the samples;
* ``"pxp"`` (Hatefi et al., "Pruning By Explaining Revisited", 2024): per sample, the relevance
  summed over positions, then its absolute value, summed over the samples; a weight's score is
  the sum over samples of ``|Σ_edges sharing it message|``.

A unit's relevance is that of its level's nodes (the layer's outputs, where Zennit's hooks read
the gradient of the output): one explanation per batch gives every unit of every layer. The
yeom criterion is one data-set aggregation of ``|relevance|`` (:class:`graphlrp.Aggregate` with
``absolute=True``); pxp reads every batch's explanation (units) or aggregates one sample at a
time (weights, since the absolute value is taken per sample after the sum over positions). For
``nn.Linear`` weights, where every weight is one edge, both criteria are the same.
"""
from __future__ import annotations

import itertools
from typing import Iterator

import torch
import torch.nn as nn
from torch import Tensor

from ..aggregation import Aggregate
from ..aggregation.data import Batch, batches, check_target, classes_of
from ..composites import Composite
from ..errors import InputError
from ..explainer import check_arguments, explainer_for
from ..export import check_bool, check_int
from ..frontends import lower
from ..graph import Graph
from ..rules import Rule
from .units import check_model, live, prunable, unit_shape

CRITERIA = ("yeom", "pxp")


def check_criterion(criterion: object) -> str:
    """``criterion`` if it is one of :data:`CRITERIA`, else :class:`InputError`."""
    if not isinstance(criterion, str) or criterion not in CRITERIA:
        raise InputError(f"criterion must be one of {', '.join(map(repr, CRITERIA))}, got {criterion!r}")
    return criterion


def reference_batches(model: nn.Module, data: object, target: object, batch_size: int) -> tuple[Graph, Iterator[Batch]]:
    """The graph of ``model`` (lowered on the first sample of ``data``) and every batch of ``data``."""
    stream = batches(data, target, batch_size)
    first = next(stream, None)
    if first is None or len(first.x) == 0:
        raise InputError("data holds no samples")
    return lower(model, first.x[:1]), itertools.chain([first], stream)


def normalized(scores: dict[str, Tensor]) -> dict[str, Tensor]:
    """Every layer's scores divided by their sum (Yeom et al.'s ``--norm``); a layer whose scores
    sum to zero keeps its zeros."""
    return {name: values / total if (total := values.sum()) > 0 else values for name, values in scores.items()}


def relevance_scores(
    model: nn.Module,
    data: object,
    target: object = "label",
    rule: Rule | None = None,
    composite: Composite | None = None,
    granularity: str = "channel",
    criterion: str = "yeom",
    normalize: bool = False,
    batch_size: int = 64,
) -> dict[str, Tensor]:
    """Relevance of every prunable unit of ``model`` over reference samples, by layer.

    Parameters
    ----------
    model : nn.Module
        A model :func:`graphlrp.lower` lowers (in eval mode); it is never modified.
    data : Tensor or iterable
        Reference samples, as for :func:`graphlrp.aggregate`: a tensor cut into ``batch_size``
        batches, or an iterable of ``(x, y)`` batches or tensors ``x``.
    target : int, sequence of int, Tensor, ``'predicted'`` or ``'label'``
        The class to explain for every sample (``'label'``: each batch's ``y``).
    rule, composite : optional
        As for :func:`graphlrp.explain` (exactly one).
    granularity : {'weight', 'neuron', 'channel'}
        Score every weight, every output of an ``nn.Linear`` but the last, or every output
        channel of a convolution (see :mod:`graphlrp.pruning.units`).
    criterion : {'yeom', 'pxp'}
        Where the absolute value is taken (see the module docstring).
    normalize : bool
        Divide every layer's scores by their sum, so that layers of different scale rank
        together (Yeom et al.'s option; Hatefi et al. rank raw scores).
    batch_size : int
        Samples explained at once when ``data`` is a tensor.

    Returns
    -------
    dict of str to Tensor
        ``{module_path: scores}`` in float64, each shaped like the layer's weight (``'weight'``)
        or ``(outputs,)``; a pruned unit scores zero.

    Raises
    ------
    ArgumentTypeError, InputError
        For a model that is not a module or has no layer to prune at ``granularity``, an unknown
        granularity or criterion, data without samples, and whatever :func:`graphlrp.aggregate`
        refuses.
    """
    check_model(model)
    layers = prunable(model, granularity)
    check_criterion(criterion)
    check_bool("normalize", normalize)
    check_int("batch_size", batch_size, 1)
    target = check_target(target)
    if rule is None and composite is None:
        raise InputError("give a rule= or a composite= to explain with")
    graph, stream = reference_batches(model, data, target, batch_size)
    check_arguments(graph, rule, composite)
    if granularity == "weight":
        scores = _weight_scores(graph, stream, layers, rule, composite, criterion)
    else:
        scores = _unit_scores(graph, stream, layers, rule, composite, criterion, granularity)
    scores = {name: values * live(layers[name], granularity).to(values.device) for name, values in scores.items()}
    return normalized(scores) if normalize else scores


def _levels_of(graph: Graph, layers: dict[str, nn.Module], granularity: str) -> dict[str, list[int]]:
    """The indices of the levels every layer was lowered to (a module used twice has several)."""
    found = {name: [level.index for level in graph.levels if level.name == name] for name in layers}
    for name, indices in found.items():
        units = unit_shape(layers[name], granularity)[0]
        for index in indices:
            if graph.levels[index].shape[0] != units:
                raise InputError(f"layer {name!r} has {units} outputs but its outputs are shaped "
                                 f"{graph.levels[index].shape}; scores per {granularity} need the "
                                 f"{granularity}s first")
    return found


def _zeros(layers: dict[str, nn.Module], granularity: str, device: torch.device) -> dict[str, Tensor]:
    return {name: torch.zeros(unit_shape(m, granularity), dtype=torch.float64, device=device)
            for name, m in layers.items()}


def _unit_scores(graph: Graph, stream: Iterator[Batch], layers: dict[str, nn.Module], rule: Rule | None,
                 composite: Composite | None, criterion: str, granularity: str) -> dict[str, Tensor]:
    levels = _levels_of(graph, layers, granularity)
    scores = _zeros(layers, granularity, graph.device)
    if criterion == "yeom":
        total = Aggregate(graph, rule, composite, absolute=True, edges=False)
        for batch in stream:
            total.update(batch.x, batch.target)
        nodes = total.node_relevance
        for name, found in levels.items():
            for index in found:
                level = graph.levels[index]
                values = nodes[level.offset : level.offset + level.size]
                scores[name] += values.reshape(level.shape[0], -1).sum(1)
        return scores
    explainer = explainer_for(graph, rule, composite)
    for batch in stream:
        explanation = explainer(batch.x, target=classes_of(graph, batch.x, batch.target))
        for name, found in levels.items():
            for index in found:
                values = explanation.level_relevance(index)
                per_sample = values.reshape(len(values), values.shape[1], -1).sum(-1)
                scores[name] += per_sample.abs().sum(0, dtype=torch.float64)
    return scores


def _weight_scores(graph: Graph, stream: Iterator[Batch], layers: dict[str, nn.Module], rule: Rule | None,
                   composite: Composite | None, criterion: str) -> dict[str, Tensor]:
    scores = _zeros(layers, "weight", graph.device)
    if criterion == "yeom":
        parts = [Aggregate(graph, rule, composite, absolute=True, edges=False)]
        for batch in stream:
            parts[0].update(batch.x, batch.target)
    else:
        parts = _per_sample_aggregates(graph, stream, rule, composite)
    for part in parts:
        named = part.parameter_relevance()
        for name in layers:
            values = named.get(f"{name}.weight")
            if values is not None:
                scores[name] += values.abs()
    return scores


def _per_sample_aggregates(graph: Graph, stream: Iterator[Batch], rule: Rule | None,
                           composite: Composite | None) -> Iterator[Aggregate]:
    """One aggregate per sample (the absolute value is taken per sample)."""
    for batch in stream:
        classes = classes_of(graph, batch.x, batch.target)
        for row in range(len(batch.x)):
            yield Aggregate(graph, rule, composite, edges=False).update(batch.x[row : row + 1], classes[row : row + 1])

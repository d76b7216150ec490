"""``RelevanceImportance``: relevance as an importance criterion for Torch-Pruning.

Torch-Pruning (``torch-pruning`` on PyPI, Fang et al., "DepGraph", CVPR 2023) removes channels
structurally (a smaller model) and asks an importance criterion for the scores of every group of
coupled channels. This one answers with the relevance of the group's convolution output channels
and ``nn.Linear`` outputs over reference samples (:func:`graphlrp.pruning.relevance_scores`),
summed over the group's layers; groups without such a layer get no score (``None``), which the
pruners skip. The scores are computed once per shape of the model, so an iterative pruner
re-explains the model it has made smaller at every step.

``torch_pruning`` is imported only when a group is scored: graphlrp imports without it.
"""
from __future__ import annotations

import torch
import torch.nn as nn
from torch import Tensor

from ..composites import Composite
from ..export import check_bool, check_int
from ..rules import Rule
from .relevance import check_criterion, relevance_scores
from .units import check_model

def _torch_pruning():
    try:
        import torch_pruning
    except ImportError:
        raise ImportError("RelevanceImportance needs torch-pruning: pip install 'graphlrp[pruning]'") from None
    return torch_pruning


class RelevanceImportance:
    """Importance of Torch-Pruning channel groups by their relevance over reference samples.

    Parameters
    ----------
    model : nn.Module
        The model the pruner prunes (the same object).
    data, target, rule, composite, criterion, normalize, batch_size
        As for :func:`graphlrp.pruning.relevance_scores`.

    Examples
    --------
    >>> importance = RelevanceImportance(model, reference, target="label", composite=EpsilonPlus())
    >>> pruner = torch_pruning.pruner.BasePruner(model, example, importance=importance,
    ...                                          pruning_ratio=0.5, ignored_layers=[model[-1]])
    >>> pruner.step()
    """

    def __init__(self, model: nn.Module, data: object, target: object = "label", rule: Rule | None = None,
                 composite: Composite | None = None, criterion: str = "pxp", normalize: bool = False,
                 batch_size: int = 64) -> None:
        self.model = check_model(model)
        check_criterion(criterion)
        check_bool("normalize", normalize)
        check_int("batch_size", batch_size, 1)
        self.data, self.target, self.rule, self.composite = data, target, rule, composite
        self.criterion, self.normalize, self.batch_size = criterion, normalize, batch_size
        self._shapes: tuple | None = None
        self._scores: dict[int, Tensor] = {}

    def _shape_key(self) -> tuple:
        return tuple((name, tuple(p.shape)) for name, p in self.model.named_parameters())

    def scores(self) -> dict[int, Tensor]:
        """Output-unit relevance of every convolution and ``nn.Linear`` (but the last), by
        ``id(module)``; recomputed when the model's shapes changed since the last call."""
        if self._shapes == self._shape_key():
            return self._scores
        paths = {name: module for name, module in self.model.named_modules()}
        found: dict[int, Tensor] = {}
        linear = [m for m in paths.values() if isinstance(m, nn.Linear)]
        granularities = ["channel"] * any(isinstance(m, nn.modules.conv._ConvNd) for m in paths.values())
        granularities += ["neuron"] * (len(linear) > 1)
        for granularity in granularities:
            named = relevance_scores(self.model, self.data, target=self.target, rule=self.rule,
                                     composite=self.composite, granularity=granularity, criterion=self.criterion,
                                     normalize=self.normalize, batch_size=self.batch_size)
            found.update({id(paths[name]): values for name, values in named.items()})
        self._shapes, self._scores = self._shape_key(), found
        return found

    def __call__(self, group) -> Tensor | None:
        """The summed relevance of every channel of ``group`` (a ``torch_pruning`` group), or
        ``None`` if none of its layers is scored."""
        tp = _torch_pruning()
        removers = (tp.pruner.function.prune_conv_out_channels, tp.pruner.function.prune_linear_out_channels)
        scores = self.scores()
        total: Tensor | None = None
        for position, (dependency, idxs) in enumerate(group):
            values = scores.get(id(dependency.layer))
            root_idxs = group[position].root_idxs
            if values is None or dependency.pruning_fn not in removers or any(i is None for i in root_idxs):
                continue
            root = torch.as_tensor(root_idxs, dtype=torch.long, device=values.device)
            if total is None:
                total = torch.zeros(len(group[0].idxs), dtype=torch.float64, device=values.device)
            total.index_add_(0, root, values[torch.as_tensor(idxs, dtype=torch.long, device=values.device)])
        return total

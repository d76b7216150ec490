"""``prune_iteratively``: explain, prune, explain the pruned model, prune further."""
from __future__ import annotations

from typing import Callable, Sequence

import torch.nn as nn
from torch import Tensor

from ..composites import Composite
from ..errors import ArgumentTypeError, InputError
from ..rules import Rule
from .masks import SCOPES, check_amount, prune
from .relevance import check_criterion, relevance_scores
from .units import check_granularity, check_model, prunable


def check_steps(steps: object) -> list[float]:
    """``steps`` as a non-empty list of increasing amounts in ``[0, 1]``."""
    if isinstance(steps, (str, bytes)) or not isinstance(steps, Sequence) or not steps:
        raise ArgumentTypeError(f"steps must be a non-empty sequence of amounts in [0, 1], got {steps!r}")
    amounts = [check_amount(step) for step in steps]
    if any(later <= earlier for earlier, later in zip(amounts, amounts[1:])):
        raise InputError(f"steps must increase (each is the fraction pruned after that step), got {list(steps)}")
    return amounts


def prune_iteratively(
    model: nn.Module,
    data: object,
    steps: Sequence[float],
    target: object = "label",
    rule: Rule | None = None,
    composite: Composite | None = None,
    granularity: str = "channel",
    criterion: str = "yeom",
    normalize: bool = False,
    scope: str = "global",
    batch_size: int = 64,
    on_step: Callable[[float, nn.Module], None] | None = None,
) -> list[dict[str, Tensor]]:
    """Prune ``model`` in steps, explaining the model as pruned so far before every step.

    At every step the reference samples are explained on the current model (its masks included,
    so that what earlier steps pruned carries no relevance), and the units of lowest relevance are
    pruned until ``amount`` of them are.

    Parameters
    ----------
    model : nn.Module
        Modified in place, as by :func:`prune`.
    data, target, rule, composite, granularity, criterion, normalize, batch_size
        As for :func:`relevance_scores`.
    steps : sequence of float
        Increasing amounts: the fraction of the units pruned after each step.
    scope : {'global', 'layer'}
        As for :func:`prune`.
    on_step : callable, optional
        Called as ``on_step(amount, model)`` after every step (to measure the pruned model).

    Returns
    -------
    list of dict of str to Tensor
        The scores every step pruned by.
    """
    check_model(model)
    check_granularity(granularity)
    check_criterion(criterion)
    amounts = check_steps(steps)
    if not isinstance(scope, str) or scope not in SCOPES:
        raise InputError(f"scope must be one of {', '.join(map(repr, SCOPES))}, got {scope!r}")
    if on_step is not None and not callable(on_step):
        raise ArgumentTypeError(f"on_step must be callable, got {type(on_step).__name__}")
    prunable(model, granularity)
    history = []
    for amount in amounts:
        scores = relevance_scores(model, data, target=target, rule=rule, composite=composite,
                                  granularity=granularity, criterion=criterion, normalize=normalize,
                                  batch_size=batch_size)
        prune(model, scores, amount, granularity=granularity, scope=scope)
        history.append(scores)
        if on_step is not None:
            on_step(amount, model)
    return history

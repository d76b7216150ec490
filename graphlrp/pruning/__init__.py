"""Prune by explaining: relevance-guided pruning, and the loop explain → prune → explain again.

:func:`relevance_scores` scores every weight, neuron or channel of a model by its relevance over
reference samples (the criteria of Yeom et al. 2021 and Hatefi et al. 2024,
:mod:`graphlrp.pruning.relevance`); :func:`magnitude_scores` and :func:`taylor_scores` are the
criteria it is compared with (:mod:`graphlrp.pruning.baselines`). :func:`prune` masks the lowest
scores through ``torch.nn.utils.prune`` (:mod:`graphlrp.pruning.masks`), so that
:func:`graphlrp.lower` then sees fewer edges; :func:`prune_iteratively` re-explains the pruned
model between steps. :class:`RelevanceImportance` is an importance criterion for Torch-Pruning's
structural pruners (needs ``torch-pruning``, the ``pruning`` extra).
"""
from .baselines import magnitude_scores, taylor_scores
from .importance import RelevanceImportance
from .loop import prune_iteratively
from .masks import prune
from .relevance import CRITERIA, relevance_scores
from .units import GRANULARITIES

__all__ = ["CRITERIA", "GRANULARITIES", "RelevanceImportance", "magnitude_scores", "prune", "prune_iteratively",
           "relevance_scores", "taylor_scores"]

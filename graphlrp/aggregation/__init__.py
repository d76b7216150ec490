"""Data-set aggregation: relevance per node, edge and parameter summed over many samples.

:func:`aggregate` explains a data set batch by batch and adds, per block, the sums over samples
of its edges' messages with the block's own kernel (:mod:`graphlrp.aggregation.sums`), never
holding ``samples × edges``; :class:`Aggregate` reads them per node, per edge and per parameter
of the user's model (:mod:`graphlrp.aggregation.parameters`).
"""
from .core import Aggregate, aggregate

__all__ = ["Aggregate", "aggregate"]

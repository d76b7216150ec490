"""Data-set aggregation: relevance per node, edge and parameter summed over many samples.

:func:`aggregate` explains a data set batch by batch and adds, per block, the sums over samples
of its edges' messages with the block's own kernel (:mod:`graphlrp.aggregation.sums`), never
holding ``samples × edges``; :class:`Aggregate` reads them per node, per edge and per parameter
of the user's model (:mod:`graphlrp.aggregation.parameters`). The data set is cut into chunks by
sample index (:mod:`graphlrp.aggregation.chunks`), which the processes of a ``torchrun`` job share
(:mod:`graphlrp.aggregation.distributed`); the chunks' sums are added in a fixed tree over chunk
index (:mod:`graphlrp.aggregation.tree`), so every process returns one process's bits.
"""
from .core import Aggregate, aggregate

__all__ = ["Aggregate", "aggregate"]

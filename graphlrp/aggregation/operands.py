"""A block's inputs and quotients gathered over batches, multiplied once the gathering fills up.

A block's message sums for one weight transform are ``Σ_rows x_ri · s_rj`` over every sample and
rule term that uses the transform (each term's quotients scaled by its factor): one product of
the stacked rows. Made batch by batch, that product reads and writes the block's sums once per
batch, with the batch as its inner dimension; made over the rows of several batches, it writes
the sums once per gathering, with a longer inner dimension (fewer, larger products). The rows are
copied out of each explanation, whose tensors an :class:`~graphlrp.Explainer` reuses.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..blocks import Block

#: the most rows (samples × terms) one gathering holds
GATHER_ROWS = 512
#: the most elements, rows × (sources + destinations), one gathering holds
GATHER_ELEMENTS = 1 << 22
#: edges per source and destination node from which a block's products gain from gathering
#: (below, copying a row's operands costs about what the longer products save)
GATHER_DENSITY = 32


def gathering_rows(block: Block) -> int:
    """Rows a gathering of ``block``'s operands holds: 0 where gathering does not pay."""
    width = block.n_src + block.n_dst
    if block.num_edges < GATHER_DENSITY * width:
        return 0
    return min(GATHER_ROWS, GATHER_ELEMENTS // width)


class Gathering:
    """Stacked rows of one block's transformed inputs ``x`` and scaled quotients ``c·s``.

    Parameters
    ----------
    rows : int
        Rows the gathering holds.
    block : Block
        The block whose operands are gathered (its source and destination sizes).
    like : Tensor
        A tensor of the operands' dtype and device.
    node_major : bool
        Store the rows node-major (:mod:`graphlrp.layout`), as the graph stores its levels: the
        copies in keep their layout, and the products read the layout they are fastest on.
    """

    def __init__(self, rows: int, block: Block, like: Tensor, node_major: bool) -> None:
        self.rows, self.node_major = rows, node_major
        self.inputs = self._buffer(like, block.n_src)
        self.quotients = self._buffer(like, block.n_dst)
        self.filled = 0

    def _buffer(self, like: Tensor, nodes: int) -> Tensor:
        """An uninitialised ``(rows, nodes)`` buffer in the gathering's layout."""
        return like.new_empty((nodes, self.rows)).T if self.node_major else like.new_empty((self.rows, nodes))

    @property
    def room(self) -> int:
        """Rows still free."""
        return self.rows - self.filled

    def append(self, x: Tensor, s: Tensor, factor: float) -> None:
        """Add the rows ``x (b, n_src)`` and ``factor · s (b, n_dst)``; ``b`` must fit in :attr:`room`."""
        rows = slice(self.filled, self.filled + len(x))
        self.inputs[rows].copy_(x)
        if factor == 1:
            self.quotients[rows].copy_(s)
        else:
            torch.mul(s, factor, out=self.quotients[rows])
        self.filled += len(x)

    def take(self) -> tuple[Tensor, Tensor]:
        """The filled rows ``(x, c·s)`` (views, valid until the next :meth:`append`), emptying the gathering."""
        filled, self.filled = self.filled, 0
        return self.inputs[:filled], self.quotients[:filled]

    def clear(self) -> None:
        """Drop the rows held."""
        self.filled = 0

"""Element-wise block: every destination has exactly one incoming edge.

Covers copies and renumberings (a permutation, a concatenation's part, an activation applied to a
tensor that is also used before it) with weight 1, and element-wise affine layers (a batch norm
that cannot be folded) with one weight per node.
"""
from __future__ import annotations

import functools

import torch
from torch import Tensor

from .. import reductions
from ..layout import is_node_major
from ..transforms import Transform
from .base import StaticBlock


class ElementwiseBlock(StaticBlock):
    """Destination ``j`` receives from source ``index[j]`` with weight ``weight[j]``.

    Parameters
    ----------
    src, dst : int
        Source and destination level indices.
    n_src : int
        Size of the source level.
    index : Tensor
        ``(n_dst,)`` local source node of every destination.
    weight : Tensor
        ``(n_dst,)`` edge weights (zeros are not edges).
    """

    kind = "elementwise"

    def __init__(self, src: int, dst: int, n_src: int, index: Tensor, weight: Tensor) -> None:
        super().__init__(src, dst, n_src=n_src, n_dst=len(index))
        self.index = index.to(device=weight.device, dtype=torch.long)
        self.weight = weight
        self._edges: tuple[Tensor, Tensor, Tensor] | None = None

    @functools.cached_property
    def num_edges(self) -> int:
        return int(torch.count_nonzero(self.weight))

    def held(self) -> tuple[Tensor, ...]:
        return (self.index, self.weight)

    def _transformed(self, transform: Transform) -> Tensor:
        return transform(self.weight)

    def _matvec(self, x: Tensor, operand: Tensor) -> Tensor:
        if is_node_major(x):
            return x.T.index_select(0, self.index).T * operand
        return x.index_select(1, self.index) * operand

    def _rmatvec(self, s: Tensor, operand: Tensor) -> Tensor:
        out = s.new_zeros((self.n_src, len(s)))
        reductions.scatter_add_(out, self.index, (s * operand).T)
        return out.T

    # -- sums over samples: one slot per destination --------------------------------------------
    @property
    def sum_shape(self) -> tuple[int, ...]:
        return (self.n_dst,)

    def add_message_sums(self, out: Tensor, x: Tensor, s: Tensor, alpha: float = 1.0, state: object = None) -> None:
        """``out_j += alpha · Σ_b x_b,index[j] s_bj``."""
        sources = x.T.index_select(0, self.index) if is_node_major(x) else x.index_select(1, self.index).T
        out.add_((sources * s.T).sum(1), alpha=alpha)

    def edge_slots(self) -> Tensor:
        return self.edges()[1]

    def slot_weights(self, transform: Transform) -> Tensor:
        return transform(self.weight)

    def weight_sums(self, values: Tensor) -> Tensor:
        return values

    def edges(self) -> tuple[Tensor, Tensor, Tensor]:
        """Listed once (one read of the device to find the nonzero weights), then kept."""
        if self._edges is None:
            keep = self.weight != 0
            self._edges = (self.index[keep], torch.nonzero(keep).flatten(), self.weight[keep])
        return self._edges

    def _to(self, device, dtype) -> "ElementwiseBlock":
        return ElementwiseBlock(self.src, self.dst, self.n_src, self.index.to(device),
                                self.weight.to(device=device, dtype=dtype))

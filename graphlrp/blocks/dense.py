"""Dense block: a full weight matrix, reductions by matrix multiplication.

The right kind when most weights are nonzero: matmul moves 4 bytes per weight once per batch,
where an edge list moves 36 + 36·B bytes per edge. Products keep the layout of their operand
(:mod:`graphlrp.layout`); ``W`` times a node-major operand is the faster of the two.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..layout import is_node_major
from ..transforms import Transform
from .base import StaticBlock


class DenseBlock(StaticBlock):
    """Edges held as a ``(n_dst, n_src)`` weight matrix (``nn.Linear``'s layout); zeros are not edges.

    Parameters
    ----------
    src, dst : int
        Source and destination level indices.
    weight : Tensor
        ``(n_dst, n_src)`` weights.
    """

    kind = "dense"

    def __init__(self, src: int, dst: int, weight: Tensor) -> None:
        if weight.dim() != 2:
            raise ValueError(f"dense block weight must be 2-D (n_dst, n_src), got shape {tuple(weight.shape)}")
        super().__init__(src, dst, n_src=weight.shape[1], n_dst=weight.shape[0])
        self.weight = weight
        self._num_edges = int(torch.count_nonzero(weight))
        self._edges: tuple[Tensor, Tensor, Tensor] | None = None

    @property
    def num_edges(self) -> int:
        return self._num_edges

    def held(self) -> tuple[Tensor, ...]:
        return (self.weight,)

    def _transformed(self, transform: Transform) -> Tensor:
        return transform(self.weight)

    def _matvec(self, x: Tensor, operand: Tensor) -> Tensor:
        if is_node_major(x):  # (W x) in (n, B): the result keeps the input's layout
            return (operand @ x.T).T
        return x @ operand.T

    def _rmatvec(self, s: Tensor, operand: Tensor) -> Tensor:
        if is_node_major(s):
            return (operand.T @ s.T).T
        return s @ operand

    def edges(self) -> tuple[Tensor, Tensor, Tensor]:
        if self._edges is None:
            dst, src = torch.nonzero(self.weight, as_tuple=True)
            self._edges = (src, dst, self.weight[dst, src])
        return self._edges

    def _to(self, device, dtype) -> "DenseBlock":
        return DenseBlock(self.src, self.dst, self.weight.to(device=device, dtype=dtype))

"""Gate block: an element-wise product ``y = x · g`` of two computed tensors.

The signal ``x`` is the block's source level; the gate ``g`` is a :attr:`~Block.context` level.
Destination ``j`` has one edge, from source ``index[j]``, whose weight in a sample is the gate's
value ``g[gate_index[j]]`` in that sample (the gate may be broadcast: a squeeze-and-excitation
gate ``(C, 1, 1)`` weighs every position of its channel). The gate values are read in the forward
pass and kept as the block's state. Relevance flows to the signal only: the gate receives none
through the product (the signal-gate convention of AttnLRP).
"""
from __future__ import annotations

import torch
from torch import Tensor

from .. import reductions
from ..layout import in_layout_of
from ..transforms import Identity, Transform
from .base import Block, EdgeRun, OperandCache, sample_edge_products


class GateBlock(Block):
    """Destination ``j`` receives source ``index[j]`` times the gate's node ``gate_index[j]``.

    Parameters
    ----------
    src, dst : int
        Source (signal) and destination level indices.
    n_src : int
        Size of the source level.
    index : Tensor
        ``(n_dst,)`` local source node of every destination.
    gate : int
        The level holding the gate values (before ``dst``).
    gate_index : Tensor
        ``(n_dst,)`` local node of the gate level that weighs every destination.
    dtype : torch.dtype
        Floating dtype of the graph (the gate values come in the activations' dtype).
    """

    kind = "gate"
    linear_forward = False
    #: the summed messages of an edge are not a sum over samples times one weight: each sample has its own
    fixed_slot_weights = False

    def __init__(self, src: int, dst: int, n_src: int, index: Tensor, gate: int, gate_index: Tensor,
                 dtype: torch.dtype = torch.float32) -> None:
        super().__init__(src, dst, n_src, len(index))
        self.index = index.to(torch.long)
        self.gate_index = gate_index.to(device=self.index.device, dtype=torch.long)
        self.context = (gate,)
        self._dtype = dtype

    @property
    def num_edges(self) -> int:
        return self.n_dst

    @property
    def nbytes(self) -> int:
        return (self.index.numel() + self.gate_index.numel()) * self.index.element_size()

    @property
    def device(self) -> torch.device:
        return self.index.device

    @property
    def dtype(self) -> torch.dtype:
        return self._dtype

    def max_abs_weight(self) -> float:
        return 1.0  # the weights are the gate's values, known per sample only

    def prepare(self, x: Tensor, gate: Tensor) -> Tensor:
        """The gate value that weighs every destination, ``(B, n_dst)``."""
        return gate.index_select(1, self.gate_index)

    def select_state(self, state: Tensor, samples: Tensor) -> Tensor:
        return state.index_select(0, samples)

    def forward(self, x: Tensor, state: Tensor = None) -> Tensor:
        return in_layout_of(x.index_select(1, self.index) * state, x)

    def matvec(self, x: Tensor, transform: Transform, state: Tensor = None, cache: OperandCache | None = None) -> Tensor:
        return in_layout_of(x.index_select(1, self.index) * transform(state), x)

    def rmatvec(self, s: Tensor, transform: Transform, state: Tensor = None, cache: OperandCache | None = None) -> Tensor:
        out = s.new_zeros((self.n_src, len(s)))
        reductions.scatter_add_(out, self.index, (s * transform(state)).T)
        return in_layout_of(out.T, s)

    def edge_messages(
        self, x: Tensor, s: Tensor, transform: Transform, state: Tensor = None, out: Tensor | None = None
    ) -> Tensor:
        messages = x.index_select(1, self.index).mul_(transform(state)).mul_(s)
        if out is None:
            return messages
        return out.copy_(messages)

    def run_messages(self, run: EdgeRun, x: Tensor, s: Tensor, transform: Transform = Identity(),
                     state: Tensor = None) -> Tensor:
        """:meth:`edge_messages` of the run's edges, each weighing its destination's gate value."""
        return sample_edge_products(x, run.src, transform(state.index_select(1, run.dst)), s, run.dst)

    def edges(self) -> tuple[Tensor, Tensor, Tensor]:
        """Every destination's edge from its source, with weight 1 (in a sample, it weighs the gate's value)."""
        destinations = torch.arange(self.n_dst, device=self.device)
        return self.index, destinations, torch.ones(self.n_dst, dtype=self.dtype, device=self.device)

    def _to(self, device, dtype) -> "GateBlock":
        return GateBlock(self.src, self.dst, self.n_src, self.index.to(device), self.context[0],
                         self.gate_index.to(device), dtype or self.dtype)

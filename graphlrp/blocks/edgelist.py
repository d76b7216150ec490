"""Edge-list block: explicit ``(src, dst, weight)`` lists, reductions by gather and scatter.

The most general kind (any connectivity) and the one whose cost is exactly proportional to the
number of edges; on a CPU CSR is faster, on CUDA with torch_scatter this kind is competitive.
Work is done in chunks of edges so that no ``(edges × batch)`` tensor is ever allocated.
"""
from __future__ import annotations

from typing import Iterator

import torch
from torch import Tensor

from .. import reductions
from ..transforms import Identity, Transform
from .base import EdgeRun, StaticBlock, edge_products, runs_of_listing
from .sparse import _as_matrix, sampled_product

#: elements of the largest temporary (chunk of edges × batch) the kernels allocate
CHUNK_ELEMENTS = 1 << 22


class EdgeListBlock(StaticBlock):
    """Edges held as local index lists and weights (duplicates must already be merged)."""

    kind = "edges"
    slot_per_edge = True
    operand_layout = "node"  # gathers and scatters along dim 0 of (n, B)
    prefers_node_major = True
    holds_any_edges = True

    def __init__(self, src: int, dst: int, n_src: int, n_dst: int, src_idx: Tensor, dst_idx: Tensor, weight: Tensor):
        super().__init__(src, dst, n_src, n_dst)
        index_dtype = torch.int32 if max(n_src, n_dst) < 2**31 - 1 else torch.int64
        self.src_idx = src_idx.to(device=weight.device, dtype=index_dtype)
        self.dst_idx = dst_idx.to(device=weight.device, dtype=index_dtype)
        self.weight = weight
        self._sum_pattern: tuple[Tensor, Tensor, Tensor] | None = None

    @classmethod
    def from_edge_list(cls, src: int, dst: int, n_src: int, n_dst: int, src_idx: Tensor, dst_idx: Tensor,
                       weight: Tensor) -> "EdgeListBlock":
        return cls(src, dst, n_src, n_dst, src_idx, dst_idx, weight)

    @classmethod
    def held_bytes(cls, n_src: int, n_dst: int, num_edges: int, element_size: int) -> int:
        """Per edge a 4-byte source, a 4-byte destination and the weight."""
        return num_edges * (8 + element_size)

    @property
    def num_edges(self) -> int:
        return self.weight.numel()

    def held(self) -> tuple[Tensor, ...]:
        return (self.src_idx, self.dst_idx, self.weight)

    def _transformed(self, transform: Transform) -> Tensor:
        return transform(self.weight)

    def _gather_scatter(self, x: Tensor, weight: Tensor, gather: Tensor, scatter: Tensor, size: int) -> Tensor:
        if len(x) == 1:  # one sample: 1-D gathers and scatters, torch's fastest
            return self._gather_scatter_one(x[0], weight, gather, scatter, size)[None]
        columns = x.T  # node-major x: (n, B), where dim-0 gathers and scatters are the fast layout
        out = columns.new_zeros((size, columns.shape[1]))
        chunk = max(1, CHUNK_ELEMENTS // max(1, columns.shape[1]))
        for start in range(0, self.num_edges, chunk):
            part = slice(start, start + chunk)
            messages = columns.index_select(0, gather[part]) * weight[part, None]
            reductions.scatter_add_(out, scatter[part].long(), messages)  # index_add_ is far slower on int32
        return out.T

    def _gather_scatter_one(self, x: Tensor, weight: Tensor, gather: Tensor, scatter: Tensor, size: int) -> Tensor:
        out = x.new_zeros(size)
        for start in range(0, self.num_edges, CHUNK_ELEMENTS):
            part = slice(start, start + CHUNK_ELEMENTS)
            reductions.scatter_add_(out, scatter[part], x.index_select(0, gather[part]).mul_(weight[part]))
        return out

    def _matvec(self, x: Tensor, operand: Tensor) -> Tensor:
        return self._gather_scatter(x, operand, self.src_idx, self.dst_idx, self.n_dst)

    def _rmatvec(self, s: Tensor, operand: Tensor) -> Tensor:
        return self._gather_scatter(s, operand, self.dst_idx, self.src_idx, self.n_src)

    def edges(self) -> tuple[Tensor, Tensor, Tensor]:
        return self.src_idx.long(), self.dst_idx.long(), self.weight

    def edge_messages(
        self, x: Tensor, s: Tensor, transform: Transform = Identity(), state: object = None, out: Tensor | None = None
    ) -> Tensor:
        return edge_products(x, self.src_idx, transform(self.weight), s, self.dst_idx, out)

    def edge_runs(self, max_edges: int) -> Iterator[EdgeRun]:
        """Runs cut from the held lists (views, indices widened run by run)."""
        return runs_of_listing(self.src_idx, self.dst_idx, self.weight, max_edges)

    # -- sums over samples: one slot per edge --------------------------------------------------
    def add_message_sums(self, out: Tensor, x: Tensor, s: Tensor, alpha: float = 1.0, state: object = None) -> None:
        """``out += alpha · (Sᵀ X)`` at the listed edges: a sampled product over the edges in
        ``(dst, src)`` order (found once and kept with the block), put back in list order; many
        times faster than gathering both operands per edge and reducing (``scripts/bench``'s
        aggregation section, pruned MLPs).
        """
        crow, col, order = self._pattern()
        values = sampled_product(crow, col, (self.n_dst, self.n_src), s, x)
        out.index_add_(0, order, values.to(out.dtype), alpha=alpha)

    def _pattern(self) -> tuple[Tensor, Tensor, Tensor]:
        """CSR row pointers and columns of the edges sorted by ``(dst, src)``, and that order."""
        pattern = self._sum_pattern
        if pattern is None:
            dst, src = self.dst_idx.long(), self.src_idx.long()
            order = torch.argsort(dst * self.n_src + src)
            crow = torch.zeros(self.n_dst + 1, dtype=torch.int64, device=dst.device)
            crow[1:] = torch.cumsum(torch.bincount(dst, minlength=self.n_dst), 0)
            index_dtype = self.src_idx.dtype
            pattern = self._sum_pattern = (crow.to(index_dtype), src[order].to(index_dtype), order)
        return pattern

    def weight_sums(self, values: Tensor) -> Tensor:
        """Per-edge values as the ``(n_dst, n_src)`` weight matrix (zero where there is no edge)."""
        return _as_matrix(values, self.dst_idx.long(), self.src_idx.long(), self.n_dst, self.n_src)

    def _to(self, device, dtype) -> "EdgeListBlock":
        return EdgeListBlock(
            self.src, self.dst, self.n_src, self.n_dst,
            self.src_idx.to(device), self.dst_idx.to(device), self.weight.to(device=device, dtype=dtype),
        )

"""Dense block: a full weight matrix, reductions by matrix multiplication.

The right kind when most weights are nonzero: matmul moves 4 bytes per weight once per batch,
where an edge list moves 36 + 36·B bytes per edge. Products keep the layout of their operand
(:mod:`graphlrp.layout`); ``W`` times a node-major operand is the faster of the two.

Products with transformed weights (``W⁺``, ``W + γW⁺``) with a node-major operand of
``PANELS_FROM_BATCH`` samples or more, or without an :class:`~graphlrp.blocks.base.OperandCache`
that may keep them, are computed in panels: a panel of ``PANEL_ELEMENTS`` transformed weights is
written into a reused buffer (:mod:`graphlrp.scratch`) and multiplied, so no transformed copy of
the matrix is made or kept (it would add the model's whole size to the memory of an explanation;
the benchmark's ``dense-mlp`` cases under z⁺, αβ and γ and its peak-memory section measure the
trade). Other products keep the transformed matrix in the cache: there the transform's extra pass
is not hidden behind a product bound by arithmetic (batch 1), and a batch-major product reading a
panel that other threads have just written runs several times slower than one reading a kept matrix.
"""
from __future__ import annotations

from typing import Iterator

import torch
from torch import Tensor

from ..errors import InputError
from ..layout import in_layout_of, is_node_major
from ..scratch import scratch
from ..transforms import Identity, Transform, check_maps_zero_to_zero
from .base import EdgeRun, OperandCache, StaticBlock, count_after_cast, destination_ranges

#: transformed weights per panel: 1 MB of float32, which stays in a core's cache
PANEL_ELEMENTS = 2**18
#: batches from which node-major products with transformed weights use panels even when keeping is allowed
PANELS_FROM_BATCH = 32
#: batches from which a node-major operand is multiplied in its own layout (``W @ X``, ``Wᵀ @ S``);
#: smaller ones are multiplied as ``x @ Wᵀ`` and ``s @ W`` and the small result copied back, which
#: is the faster form below these batches at 1024 × 1024 (``scripts/bench``'s dense MLP cases).
NODE_MAJOR_FROM_BATCH = {True: 16, False: 32}


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
    slot_per_edge = True
    transient_transforms = True
    prefers_node_major = True
    holds_any_edges = True

    def __init__(self, src: int, dst: int, weight: Tensor, num_edges: int | None = None) -> None:
        """``num_edges``, the nonzero weights, is counted unless given (a copy knows it already)."""
        if weight.dim() != 2:
            raise InputError(f"dense block weight must be 2-D (n_dst, n_src), got shape {tuple(weight.shape)}")
        super().__init__(src, dst, n_src=weight.shape[1], n_dst=weight.shape[0])
        self.weight = weight
        self._num_edges = int(torch.count_nonzero(weight)) if num_edges is None else num_edges
        self._edges: tuple[Tensor, Tensor, Tensor] | None = None

    @classmethod
    def from_matrix(cls, src: int, dst: int, weight: Tensor) -> "DenseBlock":
        return cls(src, dst, weight)

    @classmethod
    def from_edge_list(cls, src: int, dst: int, n_src: int, n_dst: int, src_idx: Tensor, dst_idx: Tensor,
                       weight: Tensor) -> "DenseBlock":
        matrix = weight.new_zeros((n_dst, n_src))
        matrix[dst_idx, src_idx] = weight
        return cls(src, dst, matrix)

    @classmethod
    def held_bytes(cls, n_src: int, n_dst: int, num_edges: int, element_size: int) -> int:
        """Every weight of the ``(n_dst, n_src)`` matrix, zeros included."""
        return n_src * n_dst * element_size

    @property
    def num_edges(self) -> int:
        return self._num_edges

    def held(self) -> tuple[Tensor, ...]:
        return (self.weight,)

    def _transformed(self, transform: Transform) -> Tensor:
        return transform(self.weight)

    def matvec(self, x: Tensor, transform: Transform = Identity(), state: object = None,
               cache: OperandCache | None = None) -> Tensor:
        """``out_j = Σ_i x_i f(w_ij)`` for ``x`` of shape ``(B, n_src)``; ``cache`` may keep ``f(W)``."""
        return self._product(x, transform, forward=True, cache=cache)

    def rmatvec(self, s: Tensor, transform: Transform = Identity(), state: object = None,
                cache: OperandCache | None = None) -> Tensor:
        """``out_i = Σ_j f(w_ij) s_j`` for ``s`` of shape ``(B, n_dst)``; ``cache`` may keep ``f(W)``."""
        return self._product(s, transform, forward=False, cache=cache)

    def _product(self, v: Tensor, transform: Transform, forward: bool, cache: OperandCache | None) -> Tensor:
        """``v @ f(W)ᵀ`` (``forward``) or ``v @ f(W)``: with ``W`` itself, the kept ``f(W)``, or panels."""
        if isinstance(transform, Identity):
            operand = self.weight
        elif _keeps(cache, transform, v):
            operand = self.operand(transform, cache)
        else:
            return self._panel_product(v, transform, forward)
        return self._matvec(v, operand) if forward else self._rmatvec(v, operand)

    def _product_with_ones(self, ones: Tensor, transform: Transform) -> Tensor:
        # computed once per transform: panels, so that no transformed matrix is kept for it
        return self._matvec(ones, self.weight) if isinstance(transform, Identity) else self._panel_product(
            ones, transform, forward=True)

    def _panel_product(self, v: Tensor, transform: Transform, forward: bool) -> Tensor:
        """``v @ f(W)ᵀ`` (``forward``) or ``v @ f(W)``, in ``v``'s layout, one panel of ``f(W)`` at a
        time: rows of ``W`` forward, columns backward, so that each panel gives a slice of the result."""
        check_maps_zero_to_zero(transform)
        n_in, n_out = (self.n_src, self.n_dst) if forward else (self.n_dst, self.n_src)
        step = max(1, PANEL_ELEMENTS // max(1, n_in))
        node_major = _multiplies_node_major(v, forward)
        out = v.new_empty((n_out, len(v))) if node_major else v.new_empty((len(v), n_out))
        for start in range(0, n_out, step):
            part = slice(start, start + step)
            weights = self.weight[part] if forward else self.weight[:, part]
            panel = transform.into(weights, scratch(weights.numel(), v).view(weights.shape))
            panel = panel if forward else panel.T  # (outputs of the part, n_in)
            if node_major:  # (n_out, B) stored row-major: the part's rows
                torch.mm(panel, v.T, out=out[part])
            else:  # (B, n_out): the part's columns
                torch.mm(v, panel.T, out=out[:, part])
        return out.T if node_major else in_layout_of(out, v)

    def _matvec(self, x: Tensor, operand: Tensor) -> Tensor:
        if _multiplies_node_major(x, forward=True):  # (W x) in (n, B): the result keeps the input's layout
            return (operand @ x.T).T
        return in_layout_of(x @ operand.T, x)

    def _rmatvec(self, s: Tensor, operand: Tensor) -> Tensor:
        if _multiplies_node_major(s, forward=False):
            return (operand.T @ s.T).T
        return in_layout_of(s @ operand, s)

    # -- sums over samples: one slot per weight, ``Sᵀ X`` by one matrix product ----------------
    @property
    def sum_shape(self) -> tuple[int, ...]:
        return (self.n_dst, self.n_src)

    def add_message_sums(self, out: Tensor, x: Tensor, s: Tensor, alpha: float = 1.0, state: object = None) -> None:
        """``out += alpha · Sᵀ X``: written by the product itself when ``out`` has the batch's dtype."""
        if out.dtype == x.dtype and out.is_contiguous():
            out.addmm_(s.T, x, alpha=alpha)
        else:
            out.add_(torch.mm(s.T, x), alpha=alpha)

    def edge_slots(self) -> Tensor:
        src, dst, _ = self.edges()
        return dst * self.n_src + src

    def slot_weights(self, transform: Transform) -> Tensor:
        return transform(self.weight)

    def weight_sums(self, values: Tensor) -> Tensor:
        return values

    def source_sums(self, values: Tensor) -> Tensor:
        return values.sum(-2)

    def edges(self) -> tuple[Tensor, Tensor, Tensor]:
        if self._edges is None:
            dst, src = torch.nonzero(self.weight, as_tuple=True)
            self._edges = (src, dst, self.weight[dst, src])
        return self._edges

    def edge_runs(self, max_edges: int) -> Iterator[EdgeRun]:
        """Runs of whole rows (destinations), each listed from its rows of the matrix alone."""
        for start, first, stop in destination_ranges(torch.count_nonzero(self.weight, dim=1), max_edges):
            rows = self.weight[first:stop]
            dst, src = torch.nonzero(rows, as_tuple=True)
            yield EdgeRun(start, src, dst + first, rows[dst, src])

    def _to(self, device, dtype) -> "DenseBlock":
        return DenseBlock(self.src, self.dst, self.weight.to(device=device, dtype=dtype),
                          count_after_cast(self._num_edges, self.dtype, dtype))


def _keeps(cache: OperandCache | None, transform: Transform, v: Tensor) -> bool:
    """Whether the product with ``f(W)`` uses the whole transformed matrix, kept in ``cache``."""
    if cache is None or not cache.keep:
        return False
    return transform in cache.operands or not (is_node_major(v) and v.shape[0] >= PANELS_FROM_BATCH)


def _multiplies_node_major(v: Tensor, forward: bool) -> bool:
    """Whether a product with the operand ``v (B, n)`` runs in ``v``'s node-major layout."""
    return is_node_major(v) and v.shape[0] >= NODE_MAJOR_FROM_BATCH[forward]

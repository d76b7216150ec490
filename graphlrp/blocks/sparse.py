"""Sparse block: compressed sparse rows, reductions by sparse matrix multiplication.

Holds the weight matrix ``W (n_dst, n_src)`` in CSR with 32-bit indices, and of ``Wᵀ`` the row
pointers and the permutation from ``W``'s value order to ``Wᵀ``'s: 12 bytes per edge plus 4 per
node and direction. ``Wᵀ``'s column indices (the destination of each edge in ``Wᵀ``'s order) are
derived from these when a product first needs them and kept with the transformed weights.
Measured on a 2-core CPU, CSR matmul beats dense matmul below ~10% density at batch 1 and ~35%
at batch 64, and beats a gather/scatter edge list at every density.

torch's CSR product on the CPU takes no float16 or bfloat16: a block of such weights keeps its
transformed operands in float32 there, each product takes its operand in float32 and rounds the
result back once (sums accumulate in float32, more precise than the dtype itself).
"""
from __future__ import annotations

import math
import warnings
from typing import Iterator

import torch
from torch import Tensor

from ..transforms import Identity, Transform
from .base import EdgeRun, StaticBlock, edge_products, runs_of_listing


def _csr(crow: Tensor, col: Tensor, values: Tensor, shape: tuple[int, int]) -> Tensor:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return torch.sparse_csr_tensor(crow, col, values, size=shape, check_invariants=False)


#: dtypes the CPU's CSR product does not take, and the dtype their products are computed in
_WIDENED = {torch.float16: torch.float32, torch.bfloat16: torch.float32}


def _operand_dtype(values: Tensor) -> torch.dtype:
    """The dtype a CSR operand of ``values`` is held in: ``values``' own, or float32 (:data:`_WIDENED`)."""
    return _WIDENED.get(values.dtype, values.dtype) if values.device.type == "cpu" else values.dtype


def _times(matrix: Tensor, x: Tensor) -> Tensor:
    """``x @ matrixᵀ`` for a node-major batch ``x (B, n)``, node-major and in the dtype of ``x``.

    torch's CSR product takes and gives node-major operands (:mod:`graphlrp.layout`); an ``x`` of
    another dtype than a widened ``matrix`` costs a copy in and out.
    """
    if x.dtype != matrix.dtype:
        return _times(matrix, x.to(matrix.dtype)).to(x.dtype)
    if x.shape[0] == 1:
        return torch.mv(matrix, x[0])[None]
    columns = x.T
    out = columns.new_empty((matrix.shape[0], columns.shape[1]))
    # beta=0 ignores out's contents: no zero fill, which torch.sparse.mm spends
    torch.addmm(out, matrix, columns, beta=0, out=out)
    return out.T


def sampled_product(crow: Tensor, col: Tensor, shape: tuple[int, int], s: Tensor, x: Tensor) -> Tensor:
    """``(Sᵀ X)_jk`` at the CSR pattern ``(crow, col)``, one value per stored entry, in CSR order.

    ``s (B, n_dst)`` and ``x (B, n_src)``; computed in the CSR product's dtype (float32 for half
    precision on the CPU), never forming the dense ``n_dst × n_src`` product: many times faster
    than gathering both operands per edge (``scripts/bench``'s aggregation section, pruned MLPs).
    """
    dtype = _WIDENED.get(x.dtype, x.dtype) if x.device.type == "cpu" else x.dtype
    pattern = _csr(crow, col, x.new_zeros(len(col), dtype=dtype), shape)
    # strided operands as they are: a node-major x read in place is faster than a contiguous copy
    return torch.sparse.sampled_addmm(pattern, s.T.to(dtype), x.to(dtype), beta=0).values()


def _as_matrix(values: Tensor, rows: Tensor, cols: Tensor, n_rows: int, n_cols: int) -> Tensor:
    """Per-edge ``values (..., E)`` put into ``(..., n_rows, n_cols)`` matrices (zeros elsewhere)."""
    matrix = values.new_zeros((*values.shape[:-1], n_rows * n_cols))
    matrix[..., rows * n_cols + cols] = values
    return matrix.reshape(*values.shape[:-1], n_rows, n_cols)


def _rows_of(crow: Tensor, entries: int) -> Tensor:
    """The row of each of the ``entries`` stored entries (their number given: no read of the device)."""
    counts = crow[1:] - crow[:-1]
    return torch.repeat_interleave(torch.arange(len(counts), device=crow.device, dtype=crow.dtype), counts,
                                   output_size=entries)


class SparseBlock(StaticBlock):
    """Edges held in CSR, in both directions.

    Build it with :meth:`from_matrix` or :meth:`from_edge_list`.
    """

    kind = "sparse"
    slot_per_edge = True
    operand_layout = "node"  # torch's CSR product takes and gives (n, B) operands
    prefers_node_major = True
    holds_any_edges = True

    def __init__(
        self,
        src: int,
        dst: int,
        n_src: int,
        n_dst: int,
        crow: Tensor,
        col: Tensor,
        values: Tensor,
        crow_t: Tensor,
        perm_t: Tensor,
    ) -> None:
        super().__init__(src, dst, n_src, n_dst)
        self.crow, self.col, self.values = crow, col, values
        self.crow_t, self.perm_t = crow_t, perm_t
        self._rows: Tensor | None = None
        self._col_t: Tensor | None = None

    @classmethod
    def held_bytes(cls, n_src: int, n_dst: int, num_edges: int, element_size: int) -> int:
        """Per edge a 4-byte column, a 4-byte transpose position, the weight and 4 bytes of the indices
        derived on first use; row pointers both ways."""
        return num_edges * (12 + element_size) + 4 * (n_src + n_dst)

    @classmethod
    def from_edge_list(
        cls, src: int, dst: int, n_src: int, n_dst: int, src_idx: Tensor, dst_idx: Tensor, weight: Tensor
    ) -> "SparseBlock":
        """From local edge lists (duplicates must already be merged)."""
        device = weight.device
        index_dtype = torch.int32 if max(n_src, n_dst, len(weight)) < 2**31 - 1 else torch.int64
        src_idx = src_idx.to(device=device, dtype=torch.int64)
        dst_idx = dst_idx.to(device=device, dtype=torch.int64)
        order = torch.argsort(dst_idx * n_src + src_idx)
        src_sorted, dst_sorted = src_idx[order], dst_idx[order]
        crow = torch.zeros(n_dst + 1, dtype=torch.int64, device=device)
        crow[1:] = torch.cumsum(torch.bincount(dst_sorted, minlength=n_dst), 0)
        order_t = torch.argsort(src_sorted * n_dst + dst_sorted)
        crow_t = torch.zeros(n_src + 1, dtype=torch.int64, device=device)
        crow_t[1:] = torch.cumsum(torch.bincount(src_sorted, minlength=n_src), 0)
        return cls(
            src,
            dst,
            n_src,
            n_dst,
            crow.to(index_dtype),
            src_sorted.to(index_dtype),
            weight[order].contiguous(),
            crow_t.to(index_dtype),
            order_t.to(index_dtype),
        )

    @property
    def num_edges(self) -> int:
        return self.values.numel()

    def held(self) -> tuple[Tensor, ...]:
        return (self.crow, self.col, self.crow_t, self.perm_t, self.values)

    def _transformed(self, transform: Transform) -> tuple[Tensor, Tensor]:
        values = transform(self.values)
        values = values.to(_operand_dtype(values))
        forward = _csr(self.crow, self.col, values, (self.n_dst, self.n_src))
        backward = _csr(self.crow_t, self._columns_t(), values[self.perm_t], (self.n_src, self.n_dst))
        return forward, backward

    def _columns_t(self) -> Tensor:
        """``Wᵀ``'s column indices: each edge's destination, in ``Wᵀ``'s order (built once, kept with the block)."""
        if self._col_t is None:
            rows = self._rows if self._rows is not None else _rows_of(self.crow, len(self.col))
            self._col_t = rows.index_select(0, self.perm_t)
        return self._col_t

    def _matvec(self, x: Tensor, operand: tuple[Tensor, Tensor]) -> Tensor:
        return _times(operand[0], x)

    def _rmatvec(self, s: Tensor, operand: tuple[Tensor, Tensor]) -> Tensor:
        return _times(operand[1], s)

    def rows(self) -> Tensor:
        """The destination of every edge, in the CSR's index dtype (built once, kept with the block).

        Expanding the row pointers costs more than gathering by the result, so it is kept.
        """
        if self._rows is None:
            self._rows = _rows_of(self.crow, len(self.col))
        return self._rows

    def edges(self) -> tuple[Tensor, Tensor, Tensor]:
        return self.col.long(), self.rows().long(), self.values

    def edge_messages(
        self, x: Tensor, s: Tensor, transform: Transform = Identity(), state: object = None, out: Tensor | None = None
    ) -> Tensor:
        return edge_products(x, self.col, transform(self.values), s, self.rows(), out)

    def edge_runs(self, max_edges: int) -> Iterator[EdgeRun]:
        """Runs cut from the CSR's own arrays (no listing of every edge in 64-bit indices)."""
        return runs_of_listing(self.col, self.rows(), self.values, max_edges)

    # -- sums over samples: one slot per edge, ``Sᵀ X`` sampled at the stored pattern ----------
    def add_message_sums(self, out: Tensor, x: Tensor, s: Tensor, alpha: float = 1.0, state: object = None) -> None:
        """``out += alpha · (Sᵀ X)`` at the stored edges, by ``torch.sparse.sampled_addmm``."""
        out.add_(sampled_product(self.crow, self.col, (self.n_dst, self.n_src), s, x), alpha=alpha)

    def weight_sums(self, values: Tensor) -> Tensor:
        """Per-edge values as the ``(n_dst, n_src)`` weight matrix (zero where there is no edge)."""
        return _as_matrix(values, self.rows().long(), self.col.long(), self.n_dst, self.n_src)

    def _to(self, device, dtype) -> "SparseBlock":
        def move(t: Tensor) -> Tensor:
            return t.to(device=device)

        return SparseBlock(
            self.src,
            self.dst,
            self.n_src,
            self.n_dst,
            move(self.crow),
            move(self.col),
            self.values.to(device=device, dtype=dtype),
            move(self.crow_t),
            move(self.perm_t),
        )


class UnrolledConvBlock(SparseBlock):
    """A convolution with unstructured-pruned kernels, held as CSR over its unrolled edges.

    Every nonzero kernel weight becomes one edge per output position that reads an input: the
    products touch only live weights, where a convolution computes every weight of the kernel.
    Each edge remembers its kernel weight, so that sums per edge fold back into the kernel's shape
    (:meth:`weight_sums`), as a :class:`~graphlrp.blocks.ConvBlock`'s do.
    """

    def __init__(self, src: int, dst: int, n_src: int, n_dst: int, crow: Tensor, col: Tensor, values: Tensor,
                 crow_t: Tensor, perm_t: Tensor, kernel_index: Tensor, kernel_shape: tuple[int, ...]) -> None:
        super().__init__(src, dst, n_src, n_dst, crow, col, values, crow_t, perm_t)
        self.kernel_index, self.kernel_shape = kernel_index, tuple(kernel_shape)

    @classmethod
    def from_edges(cls, src: int, dst: int, n_src: int, n_dst: int, src_idx: Tensor, dst_idx: Tensor, weight: Tensor,
                   kernel_index: Tensor, kernel_shape: tuple[int, ...]) -> "UnrolledConvBlock":
        """From the edges of a convolution (``kernel_index``: each edge's flat position in the kernel)."""
        csr = SparseBlock.from_edge_list(src, dst, n_src, n_dst, src_idx, dst_idx, weight)
        order = torch.argsort(dst_idx.to(torch.int64) * n_src + src_idx.to(torch.int64))
        return cls(src, dst, n_src, n_dst, csr.crow, csr.col, csr.values, csr.crow_t, csr.perm_t,
                   kernel_index.to(device=weight.device, dtype=csr.col.dtype)[order], kernel_shape)

    @classmethod
    def held_bytes(cls, n_src: int, n_dst: int, num_edges: int, element_size: int) -> int:
        """A CSR block's bytes and a 4-byte kernel position per edge."""
        return super().held_bytes(n_src, n_dst, num_edges, element_size) + 4 * num_edges

    def held(self) -> tuple[Tensor, ...]:
        return (self.kernel_index, *super().held())  # the weights stay last

    def weight_sums(self, values: Tensor) -> Tensor:
        """Per-edge values summed per kernel weight: ``(..., C_out, C_in / groups, *kernel)``."""
        flat = values.reshape(-1, values.shape[-1])
        sums = flat.new_zeros((flat.shape[0], math.prod(self.kernel_shape)))
        sums.index_add_(1, self.kernel_index.long(), flat)
        return sums.reshape(*values.shape[:-1], *self.kernel_shape)

    def _to(self, device, dtype) -> "UnrolledConvBlock":
        moved = super()._to(device, dtype)
        return UnrolledConvBlock(moved.src, moved.dst, moved.n_src, moved.n_dst, moved.crow, moved.col, moved.values,
                                 moved.crow_t, moved.perm_t, self.kernel_index.to(device=device), self.kernel_shape)

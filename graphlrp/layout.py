"""Memory layout of the ``(B, n)`` per-level tensors: batch-major or node-major.

Every per-level tensor (activations, pre-activations, relevance, quotients) is indexed
``(sample, node)``. It is stored either batch-major (row-major ``(B, n)``) or node-major: the
transpose of a row-major ``(n, B)`` tensor. torch's CSR products and the edge-list gathers and
scatters take and give node-major operands; a dense ``W (n_dst, n_src)`` times a node-major
operand is ``W @ X`` with ``X (n_src, B)`` row-major, which runs faster than ``x @ Wᵀ`` at batch
64 and 1024 × 1024 (the dense MLP cases of ``scripts/bench``), and each level's slice of the relevance storage is
then one contiguous chunk; convolutions want batch-major. An element-wise operation on operands of
one layout keeps that layout and runs at full speed; mixing layouts makes it several times slower.
So a graph picks one layout for all its per-level tensors (:attr:`graphlrp.Graph.node_major`: the
layout of the kinds holding most edges, or forced) and every block returns its results in the
layout of its input.
"""
from __future__ import annotations

from torch import Tensor

def _transpose_is_contiguous(x: Tensor) -> bool:
    """``x.T.is_contiguous()`` for a 2-D ``x``, read off the strides (no view is made)."""
    rows, columns = x.shape
    return rows * columns == 0 or ((x.stride(0) == 1 or rows <= 1) and (x.stride(1) == rows or columns <= 1))


def is_node_major(x: Tensor) -> bool:
    """Whether the 2-D ``x (B, n)`` is stored node-major (its transpose is contiguous), with ``B > 1``."""
    return x.dim() == 2 and x.shape[0] > 1 and _transpose_is_contiguous(x)


def as_node_major(x: Tensor) -> Tensor:
    """``x (B, n)`` stored node-major (copied only if it is not)."""
    return x if x.shape[0] <= 1 or _transpose_is_contiguous(x) else x.T.contiguous().T


def in_layout_of(result: Tensor, operand: Tensor) -> Tensor:
    """``result (B, m)`` stored in the layout of ``operand (B, n)`` (copied only if it is not)."""
    if is_node_major(operand):
        return as_node_major(result)
    return result if result.is_contiguous() else result.contiguous()

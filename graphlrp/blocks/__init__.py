"""Edge blocks: the edges between two levels, held in one kind each.

Every kind registers itself in :data:`KINDS` when its class is defined (the kinds of this package
are imported here, in the order :func:`general_kinds` lists them).
"""
from torch import Tensor

from ..errors import InputError
from . import base
from .base import Block, EdgeRun, OperandCache, StaticBlock
from .dense import DenseBlock
from .sparse import SparseBlock, UnrolledConvBlock
from .edgelist import EdgeListBlock
from .conv import ConvBlock
from .elementwise import ElementwiseBlock
from .pool import MaxPoolBlock
from .gate import GateBlock
from .tokens import LayerNormBlock, TokenLinearBlock
from .attention import AttentionBlock
from .attnlrp import HeadMatrices, HeadProductBlock, SoftmaxBlock, SoftmaxRemainderBlock

#: every block kind by its name (``kind``), filled when a :class:`Block` subclass that names one
#: is defined: the kinds of this package, and any a user defines
KINDS = base.KINDS


def general_kinds() -> tuple[str, ...]:
    """The registered kinds that can hold any edges (:attr:`Block.holds_any_edges`): those a user
    may force with ``block_kind=``, in the order they were registered."""
    return tuple(name for name, kind in KINDS.items() if kind.holds_any_edges)


def block_from_matrix(kind: str, src: int, dst: int, weight: Tensor) -> Block:
    """Build a block of ``kind`` (one of :func:`general_kinds`) from a ``(n_dst, n_src)`` weight matrix."""
    if kind not in general_kinds():
        raise InputError(f"unknown block kind {kind!r}; choose one of {general_kinds()}")
    return KINDS[kind].from_matrix(src, dst, weight)


def converted(block: Block, kind: str) -> Block:
    """``block``'s edges held in ``kind`` (one of :func:`general_kinds`), on its device.

    The copy lists the edges in its kind's order: dense and sparse blocks both by destination, then
    source, so that a conversion between them keeps the order of edge relevance.

    The copy keeps :attr:`~Block.automatic_kind`; ``block`` itself if it is of ``kind`` already.
    """
    if kind not in general_kinds():
        raise InputError(f"unknown block kind {kind!r}; choose one of {general_kinds()}")
    if block.kind == kind:
        return block
    copy = KINDS[kind].from_edge_list(block.src, block.dst, block.n_src, block.n_dst, *block.edges())
    copy.automatic_kind = block.automatic_kind
    return copy


__all__ = [
    "KINDS", "Block", "EdgeRun", "OperandCache", "StaticBlock", "DenseBlock", "SparseBlock", "UnrolledConvBlock", "EdgeListBlock", "ConvBlock", "ElementwiseBlock", "MaxPoolBlock",
    "GateBlock",
    "TokenLinearBlock", "LayerNormBlock", "AttentionBlock",
    "HeadMatrices", "HeadProductBlock", "SoftmaxBlock", "SoftmaxRemainderBlock",
    "general_kinds", "block_from_matrix", "converted",
]

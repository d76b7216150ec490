"""Edge blocks: the edges between two levels, held in one kind each."""
from ..errors import InputError
from .base import Block, OperandCache, StaticBlock
from .conv import ConvBlock
from .dense import DenseBlock
from .edgelist import EdgeListBlock
from .elementwise import ElementwiseBlock
from .pool import MaxPoolBlock
from .sparse import SparseBlock

#: block kinds a user may force when lowering
BLOCK_KINDS = ("dense", "sparse", "edges")


def block_from_matrix(kind: str, src: int, dst: int, weight) -> Block:
    """Build a block of ``kind`` from a ``(n_dst, n_src)`` weight matrix."""
    if kind == "dense":
        return DenseBlock(src, dst, weight)
    if kind == "sparse":
        return SparseBlock.from_dense(src, dst, weight)
    if kind == "edges":
        return EdgeListBlock.from_dense(src, dst, weight)
    raise InputError(f"unknown block kind {kind!r}; choose one of {BLOCK_KINDS}")


__all__ = [
    "Block", "OperandCache", "StaticBlock", "DenseBlock", "SparseBlock", "EdgeListBlock", "ConvBlock", "ElementwiseBlock", "MaxPoolBlock",
    "BLOCK_KINDS", "block_from_matrix",
]

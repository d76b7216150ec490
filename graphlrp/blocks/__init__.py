"""Edge blocks: the edges between two levels, held in one kind each."""
from .base import Block
from .dense import DenseBlock
from .edgelist import EdgeListBlock
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
    raise ValueError(f"unknown block kind {kind!r}; choose one of {BLOCK_KINDS}")


__all__ = ["Block", "DenseBlock", "SparseBlock", "EdgeListBlock", "BLOCK_KINDS", "block_from_matrix"]

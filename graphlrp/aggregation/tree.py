"""Chunk sums added in a fixed binary tree over the chunk indices: the same bits however the chunks are shared.

Node ``(level, index)`` stands for the chunks ``[index·2^level, (index + 1)·2^level)`` that exist,
and its sums are its two children's added; a child without chunks leaves its sibling's sums as
they are. Which additions make a node's sums is fixed by the tree alone, and float addition is
commutative, so a node has the same bits whichever process added its children, in whichever
order they arrived, and whether they were added as soon as both were there or only when the
total was asked for. A process that explains a run of consecutive chunks therefore sends one
vector per run instead of one per chunk, and holds ``O(log chunks)`` vectors at any time: a
node is added into its sibling's storage as soon as both are there.
"""
from __future__ import annotations

from typing import Iterator

import torch
from torch import Tensor

Node = tuple[int, int]
#: buffers a tree (and the trees sharing its spare ones) keeps for reuse
SPARE_BUFFERS = 8


class ChunkTree:
    """The sums of the tree's nodes that are held now; every chunk is in at most one of them.

    Parameters
    ----------
    spare : list of Tensor, optional
        Buffers to copy vectors into, shared between trees (a node added into its sibling's
        storage hands its own buffer back there).
    """

    def __init__(self, spare: list[Tensor] | None = None) -> None:
        self.nodes: dict[Node, Tensor] = {}
        self.spare = spare if spare is not None else []

    def __len__(self) -> int:
        return len(self.nodes)

    def items(self) -> Iterator[tuple[Node, Tensor]]:
        """``((level, index), sums)`` of every held node, in a fixed order (by level, then index)."""
        return iter(sorted(self.nodes.items()))

    def add(self, level: int, index: int, vector: Tensor, owned: bool = False) -> None:
        """Hold ``vector`` as the sums of node ``(level, index)``, added into its sibling's (and on
        up the tree) while the sibling is held. ``owned``: the tree may keep ``vector``'s storage;
        otherwise it copies what it keeps."""
        node = (level, index)
        if node in self.nodes:
            raise ValueError(f"chunk tree node {node} is already held: its chunks were added twice")
        while (node[0], node[1] ^ 1) in self.nodes:
            sibling = self.nodes.pop((node[0], node[1] ^ 1))
            sibling.add_(vector)
            if owned:
                self.release(vector)
            vector, owned = sibling, True
            node = (node[0] + 1, node[1] >> 1)
        self.nodes[node] = vector if owned else self._copy(vector)

    def _copy(self, vector: Tensor) -> Tensor:
        return self.buffer(vector).copy_(vector)

    def buffer(self, like: Tensor) -> Tensor:
        """A spare buffer shaped like ``like`` (its values undefined), or a new one."""
        for k, buffer in enumerate(self.spare):
            if buffer.shape == like.shape and buffer.dtype == like.dtype and buffer.device == like.device:
                return self.spare.pop(k)
        return torch.empty_like(like)

    def release(self, buffer: Tensor) -> None:
        """Keep ``buffer`` for :meth:`buffer`, up to :data:`SPARE_BUFFERS` of them."""
        if len(self.spare) < SPARE_BUFFERS:
            self.spare.append(buffer)

    def value(self, level: int, index: int) -> Tensor | None:
        """The sums of node ``(level, index)`` from the held nodes below it (``None`` if it holds none):
        a held node's own storage, or a new tensor."""
        wanted = {(level, index)}
        for held_level, held_index in self.nodes:
            if held_level <= level and held_index >> (level - held_level) == index:
                wanted.update((up, held_index >> (up - held_level)) for up in range(held_level, level + 1))
        return self._value((level, index), wanted)

    def _value(self, node: Node, wanted: set[Node]) -> Tensor | None:
        if node in self.nodes:
            return self.nodes[node]
        if node not in wanted or node[0] == 0:
            return None
        left = self._value((node[0] - 1, 2 * node[1]), wanted)
        right = self._value((node[0] - 1, 2 * node[1] + 1), wanted)
        if left is None or right is None:
            return left if right is None else right
        return left + right

    def pop(self, level: int, index: int) -> Tensor | None:
        """:meth:`value` of node ``(level, index)``, removing every node held below it (their buffers,
        but the one returned, go to the spare ones)."""
        found = self.value(level, index)
        for node in [node for node in self.nodes if node[0] <= level and node[1] >> (level - node[0]) == index]:
            buffer = self.nodes.pop(node)
            if buffer is not found:
                self.release(buffer)
        return found

    def total(self) -> Tensor | None:
        """The sums of every held node, added as the tree adds them (``None`` if it holds none)."""
        if not self.nodes:
            return None
        top = max(level + index.bit_length() for level, index in self.nodes)
        return self.value(top, 0)

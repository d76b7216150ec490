"""The chunk tree: the same bits however chunks are grouped, ordered or shared, and the sum it stands for.

The reference is the tree written from its definition: node ``(level, i)`` is its left child plus
its right child over the chunks that exist, a child without chunks leaving its sibling as is.
"""
from __future__ import annotations

import math
import random

import pytest
import torch

from graphlrp.aggregation.tree import ChunkTree


def vectors(count: int, seed: int = 0) -> list[torch.Tensor]:
    """Float64 vectors whose sums depend on the order of addition (magnitudes spread over 10¹⁶)."""
    generator = torch.Generator().manual_seed(seed)
    scale = 10.0 ** torch.randint(-8, 8, (count, 1), generator=generator).double()
    return list(torch.randn(count, 64, generator=generator, dtype=torch.float64) * scale)


def reference(values: list[torch.Tensor], level: int, index: int) -> torch.Tensor | None:
    lo, hi = index << level, min((index + 1) << level, len(values))
    if lo >= hi:
        return None
    if level == 0:
        return values[lo]
    left, right = reference(values, level - 1, 2 * index), reference(values, level - 1, 2 * index + 1)
    return left if right is None else left + right


def tree_total(values: list[torch.Tensor]) -> torch.Tensor:
    return reference(values, max(1, len(values) - 1).bit_length(), 0)


@pytest.mark.parametrize("count", [1, 2, 3, 5, 8, 13, 16, 31, 40])
def test_chunks_added_in_any_order_give_the_trees_bits(count):
    values = vectors(count, seed=count)
    expected = tree_total(values)
    for seed in range(5):
        order = list(range(count))
        random.Random(seed).shuffle(order)
        tree = ChunkTree()
        for i in order:
            tree.add(0, i, values[i])
        assert torch.equal(tree.total(), expected)
        assert len(tree) <= 2 * max(1, count.bit_length())


@pytest.mark.parametrize("count", [7, 23, 40])
@pytest.mark.parametrize("run_level", [1, 2, 3])
@pytest.mark.parametrize("processes", [1, 2, 3])
def test_runs_summed_apart_and_exchanged_give_the_bits_of_one_tree(count, run_level, processes):
    # what aggregate does: process r sums runs r, r + W, ... of 2^level chunks in a tree of its own and sends
    # each run's node; every process adds the nodes it receives into its own tree
    values = vectors(count, seed=count + run_level)
    length = 1 << run_level
    runs = -(-count // length)
    received = ChunkTree()
    for rank in range(processes):
        for run in range(rank, runs, processes):
            own = ChunkTree()
            for i in range(run * length, min((run + 1) * length, count)):
                own.add(0, i, values[i])
            received.add(run_level, run, own.pop(run_level, run))
            assert len(own) == 0
    assert torch.equal(received.total(), tree_total(values))


def test_the_total_is_the_sum_to_float64_rounding_and_a_fold_differs():
    values = vectors(40, seed=3)
    tree = ChunkTree()
    for i, value in enumerate(values):
        tree.add(0, i, value)
    exact = torch.tensor([math.fsum(float(v[j]) for v in values) for j in range(64)], dtype=torch.float64)
    largest = torch.stack(values).abs().sum(0)
    assert bool(((tree.total() - exact).abs() <= 40 * 2.0 ** -53 * largest).all())
    fold = values[0].clone()
    for value in values[1:]:
        fold += value
    assert not torch.equal(fold, tree.total())  # the order matters for these values: the tree fixes it


def test_a_node_added_twice_is_refused_and_an_empty_tree_has_no_total():
    tree = ChunkTree()
    assert tree.total() is None and tree.value(3, 0) is None
    tree.add(0, 2, torch.ones(3, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"node \(0, 2\) is already held"):
        tree.add(0, 2, torch.ones(3, dtype=torch.float64))


def test_buffers_are_copied_unless_owned_and_reused():
    tree = ChunkTree()
    given = torch.ones(4, dtype=torch.float64)
    tree.add(0, 0, given)
    given.fill_(5.0)  # the caller's buffer is free again: the tree copied it
    tree.add(0, 1, torch.full((4,), 2.0, dtype=torch.float64), owned=True)
    assert torch.equal(tree.total(), torch.full((4,), 3.0, dtype=torch.float64))
    assert len(tree.spare) == 1 and tree.buffer(given) is not None and not tree.spare

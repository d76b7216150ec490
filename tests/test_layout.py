"""Per-level tensors follow the graph's layout, and the layout never changes a result.

Graphs mix block kinds (dense, CSR, edge list, element-wise skip copies); each mix is compared
with the same network held in dense blocks only, for every rule, in both layouts.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import graphlrp
from graphlrp import rules
from graphlrp.blocks import DenseBlock, EdgeListBlock, ElementwiseBlock, OperandCache, SparseBlock
from graphlrp.layout import is_node_major
from graphlrp.propagate import run_forward
from graphlrp.transforms import Positive
from graphlrp.workspace import Workspace

from conftest import make_mlp

RULES = [rules.Epsilon(), rules.ZPlus(), rules.AlphaBeta(2, 1), rules.Gamma(0.25), rules.WSquare(), rules.Flat(),
         rules.ZBox(-3.0, 3.0)]
SIZES = [12, 20, 20, 20, 4]


def _block(kind: str, src: int, dst: int, weight: torch.Tensor):
    if kind == "dense":
        return DenseBlock(src, dst, weight)
    if kind == "sparse":
        return SparseBlock.from_matrix(src, dst, weight)
    return EdgeListBlock.from_matrix(src, dst, weight)


def mixed_graph(kinds: list[str], skip: bool) -> graphlrp.Graph:
    """The MLP of :data:`SIZES` with its layers held in blocks of ``kinds``; optionally a skip copy 1 → 3."""
    model = make_mlp(SIZES, nn.ReLU, seed=7)
    reference = graphlrp.lower(model, torch.randn(1, SIZES[0], dtype=torch.float64), block_kind="dense")
    blocks = []
    for block, kind in zip(reference.blocks, kinds):
        weight = block.weight.clone()
        weight[torch.rand(weight.shape, generator=torch.Generator().manual_seed(block.dst)) < 0.3] = 0.0
        blocks.append(_block(kind, block.src, block.dst, weight))
    if skip:
        index = torch.arange(SIZES[1])
        blocks.append(ElementwiseBlock(1, 3, SIZES[1], index, torch.full((SIZES[3],), 0.5, dtype=torch.float64)))
    return graphlrp.Graph(reference.levels, blocks)


def as_dense(graph: graphlrp.Graph) -> graphlrp.Graph:
    blocks = []
    for block in graph.blocks:
        weight = torch.zeros(block.n_dst, block.n_src, dtype=torch.float64)
        src, dst, values = block.edges()
        weight[dst, src] = values
        blocks.append(DenseBlock(block.src, block.dst, weight))
    return graphlrp.Graph(graph.levels, blocks)


MIXES = [
    (["sparse", "edges", "dense", "sparse"], True),
    (["dense", "sparse", "dense", "edges"], True),
    (["sparse", "sparse", "sparse", "sparse"], False),
    (["edges", "dense", "edges", "edges"], False),
]


@pytest.mark.parametrize("kinds, skip", MIXES)
def test_mixed_kinds_equal_dense_for_every_rule(kinds, skip):
    graph = mixed_graph(kinds, skip)
    reference = as_dense(graph)
    reference.node_major = False  # the reference computes batch-major, the mixed graph node-major
    assert graph.node_major
    x = torch.randn(9, SIZES[0], dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    target = torch.arange(9) % SIZES[-1]
    torch.testing.assert_close(graph(x), reference(x), rtol=1e-12, atol=1e-12)
    for rule in RULES:
        ours = graphlrp.explain(graph, x, target=target, rule=rule)
        theirs = graphlrp.explain(reference, x, target=target, rule=rule)
        torch.testing.assert_close(ours.node_relevance, theirs.node_relevance, rtol=1e-10, atol=1e-12, msg=repr(rule))
        torch.testing.assert_close(ours.edge_relevance([0, 4]), theirs.edge_relevance([0, 4]), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("kinds, skip", MIXES)
@pytest.mark.parametrize("node_major", [True, False])
def test_per_level_tensors_follow_the_graph_layout(kinds, skip, node_major):
    graph = mixed_graph(kinds, skip)
    assert graph.node_major  # matrix, CSR and edge-list kernels all prefer node-major operands
    graph.node_major = node_major
    x = torch.randn(5, SIZES[0], dtype=torch.float64)
    trace = run_forward(graph, Workspace(), x)
    for tensor in trace.activations + trace.preactivations[1:]:
        assert is_node_major(tensor) == node_major
    explanation = graphlrp.explain(graph, x, target=0, rule=rules.Gamma(0.25))
    assert is_node_major(explanation.node_relevance) == node_major
    for quotient in explanation._records[-1].quotients:
        assert is_node_major(quotient) == node_major
    assert graph.to(dtype=torch.float32).node_major == node_major
    with pytest.raises(TypeError, match="node_major must be True or False"):
        graph.node_major = 1


def test_edge_relevance_into_a_reused_buffer():
    graph = mixed_graph(["sparse", "edges", "dense", "sparse"], skip=True)
    x = torch.randn(3, SIZES[0], dtype=torch.float64)
    explanation = graphlrp.explain(graph, x, target=1, rule=rules.AlphaBeta(2, 1))
    buffer = torch.full((graph.num_edges,), float("nan"), dtype=torch.float64)
    for sample in range(3):
        result = explanation.edge_relevance(sample, out=buffer)
        assert result is buffer
        torch.testing.assert_close(buffer, explanation.edge_relevance(sample), rtol=0, atol=0)
    many = torch.empty(2, graph.num_edges, dtype=torch.float64)
    torch.testing.assert_close(explanation.edge_relevance([2, 0], out=many), explanation.edge_relevance([2, 0]))
    with pytest.raises(ValueError, match=r"out must be a contiguous torch.float64 tensor of shape \(2, "):
        explanation.edge_relevance([0, 1], out=buffer)
    with pytest.raises(ValueError, match="float32"):
        explanation.edge_relevance(0, out=buffer.float())


def test_sparse_block_holds_twelve_bytes_per_edge_and_derives_the_transpose():
    generator = torch.Generator().manual_seed(3)
    weight = torch.randn(300, 200, generator=generator) * (torch.rand(300, 200, generator=generator) < 0.05)
    block = SparseBlock.from_matrix(0, 1, weight)
    assert block.nbytes == 12 * block.num_edges + 4 * (301 + 201)
    s = torch.randn(4, 300, generator=generator)
    x = torch.randn(4, 200, generator=generator)
    torch.testing.assert_close(block.rmatvec(s), s @ weight, rtol=1e-5, atol=1e-5)  # Wᵀ built on demand
    torch.testing.assert_close(block.matvec(x), x @ weight.T, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(block.rmatvec(s[:1]), s[:1] @ weight, rtol=1e-5, atol=1e-5)
    positive = Positive()(weight)
    cache = OperandCache()
    torch.testing.assert_close(block.rmatvec(s, Positive(), cache=cache), s @ positive, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(block.matvec(x, Positive()), x @ positive.T, rtol=1e-5, atol=1e-5)  # not kept
    assert list(cache.operands) == [Positive()]


def test_layout_checks_read_the_strides_as_torch_does():
    from graphlrp.layout import _transpose_is_contiguous

    tensors = []
    for rows, columns in [(0, 3), (1, 1), (1, 4), (4, 1), (3, 5)]:
        tensors += [torch.randn(rows, columns), torch.randn(columns, rows).T,
                    torch.randn(1, columns).expand(rows, columns), torch.randn(columns, 1).expand(columns, rows).T]
        if rows and columns:
            tensors += [torch.randn(rows, 2 * columns)[:, ::2], torch.randn(columns, rows + 2).T[1:rows + 1]]
    for tensor in tensors:
        assert _transpose_is_contiguous(tensor) == tensor.T.is_contiguous(), (tuple(tensor.shape), tensor.stride())
        assert is_node_major(tensor) == (tensor.shape[0] > 1 and tensor.T.is_contiguous())

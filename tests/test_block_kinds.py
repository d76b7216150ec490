"""Block kinds register themselves by name and declare what they are; a registered kind is
accepted wherever kinds are named."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import graphlrp
from graphlrp import rules
from graphlrp.blocks import KINDS, DenseBlock, EdgeListBlock, SparseBlock, StaticBlock, general_kinds
from graphlrp.errors import InputError
from graphlrp.layout import as_node_major, is_node_major
from graphlrp.transforms import Positive

from conftest import make_mlp


class ShuffledEdges(EdgeListBlock):
    """Edge lists held in reverse order: another kind with the edge-list kernels."""

    kind = "shuffled-edges"

    @classmethod
    def from_edge_list(cls, src, dst, n_src, n_dst, src_idx, dst_idx, weight):
        return cls(src, dst, n_src, n_dst, src_idx.flip(0), dst_idx.flip(0), weight.flip(0))

    def _to(self, device, dtype):
        return ShuffledEdges(self.src, self.dst, self.n_src, self.n_dst, self.src_idx.to(device),
                             self.dst_idx.to(device), self.weight.to(device=device, dtype=dtype))


def test_the_package_kinds_are_registered_with_what_they_declare():
    assert {"dense", "sparse", "edges", "conv", "elementwise", "maxpool"} <= set(KINDS)
    assert general_kinds()[:3] == ("dense", "sparse", "edges")
    assert "shuffled-edges" in general_kinds()  # inherited holds_any_edges
    assert all(KINDS[name].prefers_node_major for name in ("dense", "sparse", "edges"))
    assert not any(KINDS[name].prefers_node_major or KINDS[name].holds_any_edges
                   for name in ("conv", "elementwise", "maxpool"))


def test_a_taken_kind_name_is_refused():
    with pytest.raises(InputError, match="block kind 'dense' is taken by graphlrp.blocks.dense.DenseBlock"):
        class OtherDense(DenseBlock):  # noqa: F841 - defining it is the test
            kind = "dense"
    assert KINDS["dense"] is DenseBlock


@pytest.mark.parametrize("kind", ["dense", "sparse", "edges"])
def test_held_bytes_estimate_what_a_block_holds(kind):
    weight = torch.randn(30, 20) * (torch.rand(30, 20) < 0.2)
    block = graphlrp.blocks.block_from_matrix(kind, 0, 1, weight)
    block.edges()  # what is derived on first use
    estimate = KINDS[kind].held_bytes(20, 30, block.num_edges, 4)
    assert block.nbytes <= estimate <= block.nbytes + 4 * block.num_edges + 4 * 52


def test_a_registered_kind_is_accepted_by_every_front_end_and_explains_as_the_dense_kind():
    model = make_mlp([6, 9, 7, 4], nn.ReLU, seed=1)
    x = torch.randn(5, 6, dtype=torch.float64)
    dense = graphlrp.lower(model, x, block_kind="dense")
    shuffled = graphlrp.lower(model, x, block_kind="shuffled-edges")
    assert {type(b) for b in shuffled.blocks} == {ShuffledEdges}
    src, dst, weight = dense.edges()
    from_edges = graphlrp.graph_from_edges(src, dst, weight, inputs=range(6), outputs=range(dense.num_nodes - 4, dense.num_nodes),
                                           block_kind="shuffled-edges", dtype=torch.float64)
    assert {type(b) for b in from_edges.blocks} == {ShuffledEdges}
    for rule in (rules.Epsilon(), rules.AlphaBeta(2, 1), rules.Gamma(0.25)):
        expected = graphlrp.explain(dense, x, target=2, rule=rule).input_relevance
        torch.testing.assert_close(graphlrp.explain(shuffled, x, target=2, rule=rule).input_relevance, expected,
                                   rtol=1e-12, atol=1e-14)
    with pytest.raises(InputError, match="unknown block_kind 'coo'"):
        graphlrp.lower(model, x, block_kind="coo")
    assert isinstance(graphlrp.lower(model, x, block_kind="sparse").blocks[0], SparseBlock)


class LayoutRecorder(StaticBlock):
    """A dense kernel that records the layout of every operand it is handed and answers batch-major."""

    kind = "layout-recorder"

    def __init__(self, weight, layout):
        super().__init__(0, 1, weight.shape[1], weight.shape[0])
        self.weight, self.operand_layout, self.seen = weight, layout, []

    @property
    def num_edges(self):
        return self.weight.numel()

    def held(self):
        return (self.weight,)

    def edges(self):
        dst, src = torch.nonzero(torch.ones_like(self.weight), as_tuple=True)
        return src, dst, self.weight[dst, src]

    def _transformed(self, transform):
        return transform(self.weight)

    def _matvec(self, x, operand):
        self.seen.append(is_node_major(x))
        return (x @ operand.T).contiguous()

    def _rmatvec(self, s, operand):
        self.seen.append(is_node_major(s))
        return (s @ operand).contiguous()

    def _to(self, device, dtype):
        return LayoutRecorder(self.weight.to(device=device, dtype=dtype), self.operand_layout)


@pytest.mark.parametrize("layout", ["node", "batch", None])
def test_kernels_get_the_layout_they_declare_and_results_the_layout_they_were_given(layout):
    torch.manual_seed(2)
    weight = torch.randn(5, 4, dtype=torch.float64)
    block = LayoutRecorder(weight, layout)
    for node_major in (False, True):
        x, s = torch.randn(6, 4, dtype=torch.float64), torch.randn(6, 5, dtype=torch.float64)
        if node_major:
            x, s = as_node_major(x), as_node_major(s)
        forward, backward = block.matvec(x, Positive()), block.rmatvec(s, Positive())
        torch.testing.assert_close(forward, x @ weight.clamp(min=0).T, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(backward, s @ weight.clamp(min=0), rtol=1e-12, atol=1e-14)
        assert is_node_major(forward) == is_node_major(backward) == node_major
        wanted = node_major if layout is None else layout == "node"
        assert block.seen[-2:] == [wanted, wanted]

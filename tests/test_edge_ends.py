"""edge_ends against the listed edges of graphs of every kind, decoded across many small runs."""
from __future__ import annotations

import pytest
import torch

import graphlrp
from graphlrp import edge_ends as edge_ends_module
from graphlrp.edge_ends import edge_ends

from test_streaming import EXPLANATIONS
from test_vit import tiny_vit


def vit_graph(attention: str) -> graphlrp.Graph:
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    return graphlrp.lower(tiny_vit(), x, attention=attention)


GRAPHS = {**{name: (lambda make=make: make().graph) for name, make in EXPLANATIONS.items()},
          "vit-cp-lrp": lambda: vit_graph("cp-lrp"), "vit-attnlrp": lambda: vit_graph("attnlrp")}


@pytest.mark.parametrize("run, chunk", [(1, 3), (7, 1 << 22), (1 << 21, 5)])
@pytest.mark.parametrize("name", sorted(GRAPHS))
def test_ends_of_positions_in_any_order_are_the_listed_ones(name, run, chunk, monkeypatch):
    monkeypatch.setattr(edge_ends_module, "DECODE_RUN", run)
    monkeypatch.setattr(edge_ends_module, "SCAN_CHUNK", chunk)
    graph = GRAPHS[name]()
    src, dst, _ = graph.edges()
    g = torch.Generator().manual_seed(len(src))
    positions = torch.cat([torch.randperm(len(src), generator=g), torch.randint(len(src), (40,), generator=g)])
    for chosen, dtype in ((positions, torch.long), (positions[:25].int(), torch.int32)):
        found_src, found_dst = edge_ends(graph, chosen, dtype)
        assert found_src.dtype == found_dst.dtype == dtype
        assert torch.equal(found_src.long(), src[chosen.long()]) and torch.equal(found_dst.long(), dst[chosen.long()])


def test_no_positions_give_no_ends():
    graph = GRAPHS["mlp-float32"]()
    src, dst = edge_ends(graph, torch.zeros(0, dtype=torch.long))
    assert src.shape == dst.shape == (0,)

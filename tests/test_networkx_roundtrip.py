"""``from_networkx`` and ``graph_to_networkx``: networks as networkx DiGraphs, and back."""
from __future__ import annotations

from dataclasses import replace

import networkx as nx
import numpy as np
import pytest
import torch

import graphlrp
from graphlrp.activations import activation_by_name
from graphlrp.frontends.edges import CycleError, graph_from_edges
from graphlrp.frontends.networkx_graph import from_networkx, graph_to_networkx

from conftest import make_mlp
from test_from_edges import random_dag


def small_network() -> nx.DiGraph:
    G = nx.DiGraph()
    G.add_node("h", bias=0.5, activation="relu")
    G.add_node("out", activation="tanh")
    G.add_edge("x2", "h", weight=2.0)
    G.add_edge("x1", "h", weight=-1.0)
    G.add_edge("h", "out", weight=1.5)
    G.add_edge("x1", "out", weight=0.25)  # skip edge
    return G


def expected_small(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x[:, 0], x[:, 1]
    h = torch.relu(2.0 * x2 - x1 + 0.5)
    return torch.tanh(1.5 * h + 0.25 * x1)[:, None]


def test_from_networkx_with_labels_and_defaults():
    graph = from_networkx(small_network(), dtype=torch.float64)
    assert [graph.node_names[i] for i in range(graph.levels[0].size)] == ["x1", "x2"]  # sorted in-degree-0 nodes
    assert [graph.node_names[i] for i in graph.outputs.tolist()] == ["out"]
    x = torch.randn(5, 2, dtype=torch.float64)
    torch.testing.assert_close(graph(x), expected_small(x))


def test_inputs_and_outputs_from_arguments_or_graph_attributes():
    G = small_network()
    x = torch.randn(4, 2, dtype=torch.float64)
    swapped = from_networkx(G, inputs=["x2", "x1"], outputs=["out", "h"], dtype=torch.float64)
    out = swapped(x.flip(1))
    torch.testing.assert_close(out[:, :1], expected_small(x))
    torch.testing.assert_close(out[:, 1], torch.relu(2.0 * x[:, 1] - x[:, 0] + 0.5))
    G.graph["inputs"], G.graph["outputs"] = ["x2", "x1"], ["h"]
    assert from_networkx(G, dtype=torch.float64)(x.flip(1)).shape == (4, 1)


def test_missing_weight_and_unknown_nodes_are_errors():
    G = small_network()
    G.add_edge("x2", "out")
    with pytest.raises(ValueError, match="edge 'x2' -> 'out' has no 'weight' attribute"):
        from_networkx(G)
    with pytest.raises(ValueError, match="inputs names nodes that are not in the graph"):
        from_networkx(small_network(), inputs=["x1", "nope"])
    with pytest.raises(TypeError, match="directed"):
        from_networkx(nx.Graph())


def test_cycles_are_named_by_label():
    G = small_network()
    G.add_edge("out", "h", weight=1.0)
    with pytest.raises(CycleError, match="'h' -> 'out' -> 'h'|'out' -> 'h' -> 'out'"):
        from_networkx(G)


def test_multidigraph_parallel_edges_are_summed():
    G = nx.MultiDiGraph()
    G.add_edge(0, 1, weight=1.0)
    G.add_edge(0, 1, weight=2.0)
    graph = from_networkx(G)
    assert graph.num_edges == 1
    assert graph(torch.tensor([[2.0]])).item() == pytest.approx(6.0)


@pytest.mark.parametrize("seed", range(4))
def test_round_trip_of_an_edge_list_graph(seed):
    dag = random_dag(seed, n=15, n_inputs=4)
    graph = dag.build()
    G = graph_to_networkx(graph)
    assert set(G.nodes) == set(range(dag.n))  # labelled by the caller's ids
    assert G.graph["inputs"] == dag.inputs.tolist()
    assert G.graph["outputs"] == dag.outputs.tolist()
    for s, d, w in zip(dag.src, dag.dst, dag.weight):
        assert G.edges[int(s), int(d)]["weight"] == pytest.approx(w)
    back = from_networkx(G, dtype=torch.float64)
    x = torch.from_numpy(np.random.default_rng(seed).normal(size=(6, 4)))
    torch.testing.assert_close(back(x), graph(x), rtol=0, atol=0)
    again = graph_to_networkx(back)
    assert nx.utils.graphs_equal(again, G)


def test_round_trip_of_a_lowered_torch_model_keeps_its_activations():
    model = make_mlp([5, 7, 6, 3], activation=torch.nn.Tanh)
    x = torch.randn(8, 5, dtype=torch.float64)
    graph = graphlrp.lower(model, x)
    G = graph_to_networkx(graph)
    back = from_networkx(G, dtype=torch.float64)
    torch.testing.assert_close(back(x), model(x).detach())
    relevance = graphlrp.explain(graph, x, target=1, rule=graphlrp.rules.ZPlus()).input_relevance
    relevance_back = graphlrp.explain(back, x, target=1, rule=graphlrp.rules.ZPlus()).input_relevance
    torch.testing.assert_close(relevance_back, relevance)


def test_input_level_activation_cannot_be_exported():
    graph = graph_from_edges([0], [1], torch.tensor([2.0]))
    relu_input = graphlrp.Graph([replace(graph.levels[0], activation=activation_by_name("relu")), *graph.levels[1:]],
                                graph.blocks)
    with pytest.raises(ValueError, match="input level applies 'relu'"):
        graph_to_networkx(relu_input)

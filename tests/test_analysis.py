"""``graphlrp.analysis``: top paths against brute force, circuits, level flows, rankings, contrasts, data sets."""
from __future__ import annotations

import math

import networkx as nx
import pytest
import torch
import torch.nn as nn

import graphlrp
from graphlrp import analysis, reductions, rules

from conftest import make_mlp
from test_from_edges import random_dag

BACKENDS = reductions.available_backends()


def explained_dag(seed: int, rule=None, batch: int = 2):
    dag = random_dag(seed, n=13, n_inputs=3, edge_probability=0.45)
    graph = dag.build(dtype=torch.float64, block_kind="edges")
    x = torch.randn(batch, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    generator = torch.Generator().manual_seed(seed + 1)
    start = torch.randn(batch, len(graph.outputs), dtype=torch.float64, generator=generator)
    return graphlrp.explain(graph, x, output_relevance=start, rule=rule or rules.Epsilon())


def explained_mlp(target=1, batch: int = 3, sizes=(5, 6, 4, 3), seed: int = 0, rule=None):
    model = make_mlp(list(sizes), seed=seed)
    x = torch.randn(batch, sizes[0], dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    graph = graphlrp.lower(model, x)
    return graphlrp.explain(graph, x, target=target, rule=rule or rules.Epsilon())


# -- top paths ------------------------------------------------------------------------------------
def brute_force_paths(explanation, sample: int, goal: int, score: str) -> dict[tuple[int, ...], float]:
    """Every path from an input node to ``goal`` with its score, by enumeration."""
    graph = explanation.graph
    src, dst, _ = graph.edges()
    messages = explanation.edge_relevance(sample)
    relevance = explanation.node_relevance[sample]
    edge_of = {(int(s), int(d)): e for e, (s, d) in enumerate(zip(src, dst))}
    G = nx.DiGraph(list(edge_of))
    G.add_nodes_from(range(graph.num_nodes))
    paths = {}
    for start in graph.levels[0].nodes:
        for nodes in nx.all_simple_paths(G, start, goal) if start != goal else [[goal]]:
            edges = [edge_of[pair] for pair in zip(nodes[:-1], nodes[1:])]
            if score == "product":
                fractions = [float(messages[e] / relevance[dst[e]]) if relevance[dst[e]] != 0 else 0.0 for e in edges]
                paths[tuple(nodes)] = float(relevance[goal]) * math.prod(fractions)
            else:
                paths[tuple(nodes)] = sum(abs(float(messages[e])) for e in edges)
    return paths


def assert_matches_brute_force(explanation, sample: int, target, k: int, score: str) -> None:
    graph = explanation.graph
    found = analysis.top_paths(explanation, sample, target=target, k=k, score=score)
    outputs = graph.outputs
    if target is None:
        target = int(explanation.node_relevance[sample, outputs].abs().argmax())
    goal = int(outputs[target])
    every = brute_force_paths(explanation, sample, goal, score)
    assert all(path.nodes[-1] == goal for path in found)
    best = sorted((abs(s) for s in every.values()), reverse=True)[:k]
    assert [abs(p.score) for p in found] == pytest.approx(best, rel=1e-10, abs=1e-300)
    assert len({p.nodes for p in found}) == len(found)
    messages = explanation.edge_relevance(sample)
    src, dst, _ = graph.edges()
    for path in found:
        assert path.nodes in every and path.nodes[0] in graph.levels[0].nodes
        assert path.score == pytest.approx(every[path.nodes], rel=1e-10, abs=1e-300)
        assert path.labels == tuple(graph.node_label(v) for v in path.nodes)
        edges = [int(torch.nonzero((src == a) & (dst == b))) for a, b in zip(path.nodes[:-1], path.nodes[1:])]
        assert path.edge_relevance == tuple(float(messages[e]) for e in edges)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("score", ["product", "sum"])
@pytest.mark.parametrize("k", [1, 3, 8])
@pytest.mark.parametrize("seed", range(6))
def test_top_paths_equal_brute_force_on_random_dags(seed, k, score, backend):
    explanation = explained_dag(seed)
    with reductions.backend(backend):
        for target in (None, *range(len(explanation.graph.outputs))):
            assert_matches_brute_force(explanation, seed % 2, target, k, score)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("score", ["product", "sum"])
@pytest.mark.parametrize("k", [1, 5])
def test_top_paths_equal_brute_force_on_a_lowered_mlp(k, score, backend):
    explanation = explained_mlp(rule=rules.AlphaBeta(2, 1))
    with reductions.backend(backend):
        for sample in range(3):
            assert_matches_brute_force(explanation, sample, None, k, score)
        assert_matches_brute_force(explanation, 0, 2, k, score)


def test_top_path_relevance_is_the_flow_along_the_path():
    explanation = explained_mlp(rule=rules.Epsilon(0.0))
    (path,) = analysis.top_paths(explanation, 0, k=1)
    relevance = explanation.node_relevance[0]
    flow = float(relevance[path.nodes[-1]])
    for m, node in zip(path.edge_relevance, path.nodes[1:]):
        flow *= m / float(relevance[node])
    assert path.score == pytest.approx(flow)
    assert path.nodes[-1] == int(explanation.graph.outputs[1])  # the target carries all output relevance


def test_fewer_paths_than_asked():
    graph = graphlrp.Graph.from_edges([0, 1], [2, 2], [1.0, 2.0], dtype=torch.float64)
    explanation = graphlrp.explain(graph, torch.tensor([[1.0, 1.0]], dtype=torch.float64), target=0)
    paths = analysis.top_paths(explanation, 0, k=5)
    assert [p.nodes for p in paths] == [(1, 2), (0, 2)]
    assert [p.score for p in paths] == pytest.approx([2.0, 1.0])


def test_top_paths_errors():
    explanation = explained_mlp()
    with pytest.raises(ValueError, match="unknown score 'max'"):
        analysis.top_paths(explanation, score="max")
    with pytest.raises(IndexError, match="sample 3 is out of range"):
        analysis.top_paths(explanation, 3)
    with pytest.raises(TypeError, match="sample must be one int"):
        analysis.top_paths(explanation, [0])
    with pytest.raises(IndexError, match="target 3 is not an index into the graph's 3 outputs"):
        analysis.top_paths(explanation, target=3)
    with pytest.raises(ValueError, match="k must be an int >= 1"):
        analysis.top_paths(explanation, k=0)


# -- circuits -------------------------------------------------------------------------------------
@pytest.mark.parametrize("fraction", [0.2, 0.5, 0.9, 1.0])
def test_circuit_is_the_smallest_edge_set_holding_the_fraction(fraction):
    explanation = explained_mlp(sizes=(8, 10, 6, 3))
    circuit = analysis.relevant_circuit(explanation, 1, fraction)
    magnitude = explanation.edge_relevance(1).abs()
    total = float(magnitude.sum())
    held = float(circuit.relevance.abs().sum())
    assert held >= fraction * total * (1 - 1e-12)
    assert circuit.fraction == pytest.approx(held / total)
    best_smaller = float(magnitude.sort(descending=True).values[: len(circuit.edges) - 1].sum())
    assert best_smaller < fraction * total
    src, dst, _ = explanation.graph.edges()
    edges = circuit.edges.long()
    assert torch.equal(circuit.src.long(), src[edges]) and torch.equal(circuit.dst.long(), dst[edges])
    assert bool((circuit.relevance.abs().diff() <= 0).all())  # by decreasing |relevance|
    assert torch.equal(circuit.nodes, torch.unique(torch.cat([src[edges], dst[edges]])))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_circuit_of_a_low_precision_graph_is_the_smallest_edge_set_holding_the_fraction(dtype):
    model = make_mlp([8, 10, 6, 3], seed=0)
    x = torch.randn(3, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    graph = graphlrp.lower(model, x).to(dtype=dtype)
    explanation = graphlrp.explain(graph, x.to(dtype), target=1)
    magnitude = explanation.edge_relevance(1).abs().double()  # the reference sums in float64
    total = float(magnitude.sum())
    for fraction in (0.2, 0.5, 0.9, 1.0):
        circuit = analysis.relevant_circuit(explanation, 1, fraction)
        assert circuit.relevance.dtype == dtype
        held = float(magnitude[circuit.edges].sum())
        assert held >= fraction * total * (1 - 1e-6)
        assert circuit.fraction == pytest.approx(held / total, rel=1e-12)
        best_smaller = float(magnitude.sort(descending=True).values[: len(circuit.edges) - 1].sum())
        assert best_smaller < fraction * total * (1 + 1e-6)


@pytest.mark.parametrize("make", [lambda: explained_mlp(), lambda: explained_dag(3, batch=1)])
def test_a_full_circuit_reproduces_the_explained_output(make):
    explanation = make()
    circuit = analysis.relevant_circuit(explanation, 0, 1.0)
    faithfulness = circuit.faithfulness()
    torch.testing.assert_close(faithfulness.output, explanation.output[0])
    explained = explanation.node_relevance[0, explanation.graph.outputs] != 0
    torch.testing.assert_close(faithfulness.circuit_output[explained], faithfulness.output[explained])
    partial = analysis.relevant_circuit(explanation, 0, 0.3).faithfulness()
    assert partial.circuit_output.shape == partial.output.shape


def test_prune_keeps_only_the_given_edges():
    explanation = explained_mlp()
    graph = explanation.graph
    x = explanation._trace.activations[0]
    torch.testing.assert_close(analysis.prune(graph, torch.arange(graph.num_edges))(x), graph(x))
    nothing = analysis.prune(graph, torch.tensor([], dtype=torch.long))
    assert nothing.num_edges == 0
    assert torch.equal(nothing(x)[0], nothing(x)[1])  # biases only: the same for every input


def test_circuit_errors():
    explanation = explained_mlp()
    for fraction in (0, 1.01, -0.5):
        with pytest.raises(ValueError, match=r"fraction must be a fraction in \(0, 1\]"):
            analysis.relevant_circuit(explanation, 0, fraction)
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(8, 2)).double()
    x = torch.randn(1, 1, 6, 6, dtype=torch.float64)
    cnn = graphlrp.explain(graphlrp.lower(model, x), x, target=0)
    with pytest.raises(ValueError, match="kind 'maxpool'.*depend on the sample"):
        analysis.relevant_circuit(cnn, 0, 0.5).faithfulness()


# -- level flow, rankings, contrast ---------------------------------------------------------------
@pytest.mark.parametrize("sample", [None, 1, [0, 1]])
@pytest.mark.parametrize("rule", [rules.Epsilon(), rules.AlphaBeta(2, 1)])
def test_level_flow_matches_the_conservation_balance(sample, rule):
    explanation = explained_dag(2, rule=rule)
    flow = analysis.level_flow(explanation, sample)
    rows = [0, 1] if sample is None else [sample] if isinstance(sample, int) else sample
    assert len({r["dst_level"] for r in flow}) > 1 and any(r["dst_level"] - r["src_level"] > 1 for r in flow)
    for balance in explanation.conservation():
        into = [r for r in flow if r["dst_level"] == balance.level]
        expected = float(balance.relevance_out[rows].sum())
        assert sum(r["total"] for r in into) == pytest.approx(expected, abs=1e-12)
    for r in flow:
        assert r["positive"] >= 0 >= r["negative"] and r["total"] == r["positive"] + r["negative"]
        assert r["src_name"] == explanation.graph.levels[r["src_level"]].name


def test_rank_neurons():
    explanation = explained_mlp(sizes=(5, 9, 4, 3))
    ranked = analysis.rank_neurons(explanation, 1, k=4)
    mean = explanation.level_relevance(1).mean(0)
    assert [n.relevance for n in ranked] == pytest.approx(mean.sort(descending=True).values[:4].tolist())
    level = explanation.graph.levels[1]
    for neuron in ranked:
        assert neuron.node == level.offset + neuron.position[0]
        assert neuron.label == explanation.graph.node_label(neuron.node)
    by_name = analysis.rank_neurons(explanation, level.name, sample=2, k=20, absolute=True)
    assert len(by_name) == level.size
    assert [abs(n.relevance) for n in by_name] == sorted(explanation.level_relevance(1)[2].abs().tolist(), reverse=True)
    with pytest.raises(ValueError, match="no level is named 'nope'"):
        analysis.rank_neurons(explanation, "nope")
    with pytest.raises(IndexError, match="level 9 is not one of"):
        analysis.rank_neurons(explanation, 9)


def test_contrast_between_two_classes():
    a, b = explained_mlp(target=0), explained_mlp(target=2)
    found = analysis.contrast(a, b, sample=1, k=5)
    difference = a.edge_relevance(1) - b.edge_relevance(1)
    largest = difference.abs().sort(descending=True).values[:5]
    assert [abs(c.difference) for c in found] == pytest.approx(largest.tolist())
    src, dst, _ = a.graph.edges()
    for c in found:
        assert (c.src, c.dst) == (int(src[c.edge]), int(dst[c.edge]))
        assert c.difference == pytest.approx(c.relevance_a - c.relevance_b)
    other = explained_mlp(seed=1)
    with pytest.raises(ValueError, match="different graphs: their edges or weights differ"):
        analysis.contrast(a, other)
    with pytest.raises(ValueError, match="different graphs: 18 nodes"):
        analysis.contrast(a, explained_mlp(sizes=(5, 6, 4, 2)))


# -- data sets ------------------------------------------------------------------------------------
@pytest.mark.parametrize("absolute", [False, True])
def test_mean_edge_relevance_equals_the_direct_mean(absolute, capsys):
    model = make_mlp([5, 7, 3])
    inputs = torch.randn(10, 5, dtype=torch.float64)
    targets = torch.arange(10) % 3
    graph = graphlrp.lower(model, inputs)
    mean = analysis.mean_edge_relevance(graph, inputs, targets, rule=rules.ZPlus(), batch_size=3, absolute=absolute)
    direct = graphlrp.explain(graph, inputs, target=targets, rule=rules.ZPlus()).edge_relevance()
    torch.testing.assert_close(mean, (direct.abs() if absolute else direct).mean(0))
    assert "10/10" in capsys.readouterr().err
    one_class = analysis.mean_edge_relevance(graph, inputs, 2, batch_size=4, progress=False)
    torch.testing.assert_close(one_class, graphlrp.explain(graph, inputs, target=2).edge_relevance().mean(0))
    assert capsys.readouterr().err == ""


def test_mean_edge_relevance_errors():
    graph = graphlrp.lower(make_mlp([3, 2]), torch.zeros(1, 3, dtype=torch.float64))
    inputs = torch.zeros(4, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match="targets has 3 entries for 4 samples"):
        analysis.mean_edge_relevance(graph, inputs, [0, 1, 0], progress=False)
    with pytest.raises(ValueError, match="batch_size must be an int >= 1"):
        analysis.mean_edge_relevance(graph, inputs, 0, batch_size=0, progress=False)
    with pytest.raises(ValueError, match="inputs holds no samples"):
        analysis.mean_edge_relevance(graph, inputs[:0], 0, progress=False)

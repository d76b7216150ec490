"""``graphlrp.export``: explanations as networkx graphs, and GraphML / JSON files that read back exactly."""
from __future__ import annotations

import time

import networkx as nx
import numpy as np
import pytest
import torch
import torch.nn as nn

import graphlrp
from graphlrp import export, rules
from graphlrp.blocks import EdgeListBlock

from conftest import make_mlp
from test_from_edges import random_dag


def explained_mlp(batch: int = 4, sizes: tuple[int, ...] = (6, 8, 5, 3), rule=None, dtype=torch.float64):
    model = make_mlp(list(sizes), dtype=dtype)
    x = torch.randn(batch, sizes[0], dtype=dtype, generator=torch.Generator().manual_seed(1))
    graph = graphlrp.lower(model, x)
    return graphlrp.explain(graph, x, target=1, rule=rule or rules.Epsilon())


def explained_cnn(dtype=torch.float32):
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(2 * 3 * 3, 3),
    ).to(dtype).eval()
    x = torch.randn(3, 1, 6, 6, dtype=dtype)
    graph = graphlrp.lower(model, x)
    return graphlrp.explain(graph, x, target=[0, 1, 2], rule=rules.Epsilon())


def explained_dag(seed: int, batch: int = 3):
    dag = random_dag(seed, n=14, n_inputs=3, edge_probability=0.4)
    graph = dag.build(dtype=torch.float64, block_kind="edges")
    x = torch.randn(batch, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    start = torch.randn(batch, len(graph.outputs), dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    return graphlrp.explain(graph, x, output_relevance=start, rule=rules.Epsilon()), start


def out_sums(G: nx.DiGraph) -> dict[int, float]:
    return {node: sum(d["relevance"] for _, _, d in G.out_edges(node, data=True)) for node in G if G.out_degree(node)}


# -- the networkx graph -------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("sample, aggregate", [(0, "sum"), (2, "sum"), ([0, 2], "sum"), (None, "mean")])
def test_outgoing_edge_relevance_sums_to_node_relevance(seed, sample, aggregate):
    explanation, start = explained_dag(seed)
    graph = explanation.graph
    G = export.explanation_to_networkx(explanation, sample, aggregate=aggregate)
    rows = export.sample_rows(explanation, sample)
    initial = torch.zeros(len(rows), graph.num_nodes, dtype=torch.float64)
    initial.index_add_(1, graph.outputs, start[rows])
    passed_on = explanation.node_relevance[rows] - initial  # what output nodes pass on excludes their start
    expected = passed_on.sum(0) if aggregate == "sum" else passed_on.mean(0)
    sums = out_sums(G)
    assert sums, "the DAG has edges"
    for node, total in sums.items():
        assert total == pytest.approx(float(expected[node]), abs=1e-12)
        assert G.nodes[node]["relevance"] == pytest.approx(float(explanation.node_relevance[rows].sum(0)[node]
                                                                    / (1 if aggregate == "sum" else len(rows))))


def test_node_and_edge_attributes_of_a_cnn():
    explanation = explained_cnn()
    graph = explanation.graph
    G = export.explanation_to_networkx(explanation, 1, keep_all_nodes=True)
    assert list(G.nodes) == list(range(graph.num_nodes))
    assert G.number_of_edges() == graph.num_edges
    conv = graph.levels[1]
    node = conv.offset + 1 * 36 + 2 * 6 + 5  # channel 1, row 2, column 5
    data = G.nodes[node]
    assert data["id"] == node and data["level"] == 1 and data["position"] == (1, 2, 5)
    assert data["layer"] == conv.name and data["layer_type"] == "Conv2d" and data["activation"] == conv.activation.name
    assert data["activation_value"] == float(explanation._trace.activations[1][1, node - conv.offset])
    assert data["relevance"] == float(explanation.node_relevance[1, node])
    src, dst, weight = graph.edges()
    messages = explanation.edge_relevance(1)
    contributions = export.edge_contributions(explanation, 1)
    activations = torch.cat(explanation._trace.activations, dim=1)[1]
    static = torch.cat([torch.full((b.num_edges,), b.kind != "maxpool") for b in graph.blocks])
    torch.testing.assert_close(contributions[static], (activations[src] * weight)[static])
    for e in [0, 17, graph.num_edges - 1]:
        edge = G.edges[int(src[e]), int(dst[e])]
        assert edge == {"weight": float(weight[e]), "contribution": float(contributions[e]),
                        "relevance": float(messages[e])}


def test_max_pool_contributions_come_from_the_winners():
    explanation = explained_cnn()
    graph = explanation.graph
    pool = next(b for b in graph.blocks if b.kind == "maxpool")
    start = sum(b.num_edges for b in graph.blocks[: graph.blocks.index(pool)])
    contributions = export.edge_contributions(explanation)[:, start : start + pool.num_edges]
    _, dst, _ = pool.edges()
    pooled = torch.zeros(3, pool.n_dst).index_add_(1, dst, contributions)
    torch.testing.assert_close(pooled, explanation._trace.activations[pool.dst])
    assert int((contributions != 0).sum()) <= 3 * pool.n_dst  # one winner per window


@pytest.mark.parametrize("rule", [rules.Epsilon(), rules.ZPlus(), rules.AlphaBeta(2, 1), rules.Gamma(0.25)])
def test_bias_shares_sum_to_the_level_balance(rule):
    explanation = explained_mlp(rule=rule)
    shares = export.bias_relevance(explanation)
    for balance in explanation.conservation():
        level = explanation.graph.levels[balance.level]
        torch.testing.assert_close(shares[:, level.offset : level.offset + level.size].sum(1), balance.bias)
    torch.testing.assert_close(export.bias_relevance(explanation, 2), shares[2])
    assert bool((shares[:, : explanation.graph.levels[0].size] == 0).all())


@pytest.mark.parametrize("aggregate", ["sum", "mean", "mean_abs"])
def test_aggregates_over_chunks_equal_direct_reductions(monkeypatch, aggregate):
    explanation = explained_mlp(batch=7)
    monkeypatch.setattr(export, "CHUNK_ELEMENTS", 2 * explanation.graph.num_edges)  # chunks of 2 samples
    G = export.explanation_to_networkx(explanation, None, aggregate=aggregate)
    messages = explanation.edge_relevance()
    nodes = explanation.node_relevance
    reduce = {"sum": lambda t: t.sum(0), "mean": lambda t: t.mean(0), "mean_abs": lambda t: t.abs().mean(0)}[aggregate]
    expected_edges, expected_nodes = reduce(messages), reduce(nodes)
    src, dst, _ = explanation.graph.edges()
    for e in range(0, explanation.graph.num_edges, 9):
        assert G.edges[int(src[e]), int(dst[e])]["relevance"] == pytest.approx(float(expected_edges[e]), abs=1e-14)
    for node in G:
        assert G.nodes[node]["relevance"] == pytest.approx(float(expected_nodes[node]), abs=1e-14)
    assert G.graph["samples"] == tuple(range(7)) and G.graph["aggregate"] == aggregate


def test_an_int_sample_ignores_the_aggregate():
    explanation = explained_mlp()
    a = export.explanation_to_networkx(explanation, 3, aggregate="mean_abs")
    b = export.explanation_to_networkx(explanation, [3], aggregate="sum")
    assert list(a.edges(data=True)) == list(b.edges(data=True))
    assert a.graph["aggregate"] == "sum"
    negative = export.explanation_to_networkx(explanation, -1)
    assert negative.graph["samples"] == (3,)


def test_parallel_edges_of_two_blocks_are_summed():
    levels = [graphlrp.Level(0, "input", "input", (2,), 0), graphlrp.Level(1, "out", "node", (1,), 2)]
    ids, weight = torch.tensor([0, 1]), torch.tensor([1.0, 2.0], dtype=torch.float64)
    blocks = [EdgeListBlock(0, 1, 2, 1, ids, torch.zeros(2, dtype=torch.long), weight),
              EdgeListBlock(0, 1, 2, 1, ids[:1], torch.zeros(1, dtype=torch.long), weight[:1] * 3)]
    graph = graphlrp.Graph(levels, blocks)
    explanation = graphlrp.explain(graph, torch.tensor([[1.0, 1.0]], dtype=torch.float64), target=0)
    G = export.explanation_to_networkx(explanation, 0)
    assert G.edges[0, 2]["weight"] == 4.0 and G.edges[0, 2]["contribution"] == 4.0
    assert out_sums(G) == pytest.approx({0: float(explanation.node_relevance[0, 0]),
                                         1: float(explanation.node_relevance[0, 1])})


# -- keeping the edges that matter ----------------------------------------------------------------
def test_top_k_threshold_and_mass_filters():
    explanation = explained_mlp(sizes=(10, 12, 8, 3))
    magnitude = explanation.edge_relevance(0).abs().numpy()
    src, dst, _ = (t.numpy() for t in explanation.graph.edges())
    order = np.argsort(-magnitude, kind="stable")

    def kept(**options) -> set[tuple[int, int]]:
        return set(export.explanation_to_networkx(explanation, 0, **options).edges)

    assert kept(top_k=7) == {(src[e], dst[e]) for e in order[:7]}
    threshold = float(np.median(magnitude))
    assert kept(threshold=threshold) == {(src[e], dst[e]) for e in np.flatnonzero(magnitude >= threshold)}
    G = export.explanation_to_networkx(explanation, 0, mass=0.5)
    held = sum(abs(d["relevance"]) for *_, d in G.edges(data=True))
    assert held >= 0.5 * magnitude.sum() and G.graph["mass_kept"] == pytest.approx(held / magnitude.sum())
    assert held - min(abs(d["relevance"]) for *_, d in G.edges(data=True)) < 0.5 * magnitude.sum()
    assert kept(top_k=7, threshold=float(magnitude[order[3]])) == {(src[e], dst[e]) for e in order[:4]}
    assert set(G.nodes) == {v for edge in G.edges for v in edge}
    full = export.explanation_to_networkx(explanation, 0, top_k=3, keep_all_nodes=True)
    assert full.number_of_nodes() == explanation.graph.num_nodes and full.number_of_edges() == 3


def test_edges_holding_mass_is_minimal():
    rng = np.random.default_rng(0)
    magnitude = np.abs(rng.normal(size=200)) * (rng.random(200) < 0.7)
    for fraction in (0.1, 0.5, 0.9, 0.999, 1.0):
        chosen = export.edges_holding_mass(magnitude, fraction)
        assert magnitude[chosen].sum() >= fraction * magnitude.sum() * (1 - 1e-12)
        best_smaller = np.sort(magnitude)[::-1][: len(chosen) - 1].sum()
        assert best_smaller < fraction * magnitude.sum()
    assert len(export.edges_holding_mass(np.zeros(5), 0.5)) == 0


def test_export_errors():
    explanation = explained_mlp()
    with pytest.raises(ValueError, match="unknown aggregate 'median'"):
        export.explanation_to_networkx(explanation, None, aggregate="median")
    with pytest.raises(IndexError, match="sample 4 is out of range for a batch of 4"):
        export.explanation_to_networkx(explanation, 4)
    with pytest.raises(IndexError, match="sample -5"):
        export.explanation_to_networkx(explanation, [0, -5])
    with pytest.raises(TypeError, match="samples must be ints"):
        export.explanation_to_networkx(explanation, [0.5])
    for mass in (0, 1.5, -0.1):
        with pytest.raises(ValueError, match=r"mass must be a fraction in \(0, 1\]"):
            export.explanation_to_networkx(explanation, 0, mass=mass)
    with pytest.raises(ValueError, match="top_k must be an int >= 0"):
        export.explanation_to_networkx(explanation, 0, top_k=-1)


# -- files ----------------------------------------------------------------------------------------
def assert_identical(G: nx.DiGraph, H: nx.DiGraph) -> None:
    """Same nodes and edges in the same order, every attribute equal and of the same type."""
    assert type(H) is nx.DiGraph
    assert list(H.nodes(data=True)) == list(G.nodes(data=True))
    assert list(H.edges(data=True)) == list(G.edges(data=True))
    assert H.graph == G.graph
    for node, data in G.nodes(data=True):
        assert {k: type(v) for k, v in H.nodes[node].items()} == {k: type(v) for k, v in data.items()}
    for u, v, data in G.edges(data=True):
        assert all(type(H.edges[u, v][k]) is float for k in data)


@pytest.mark.parametrize("write, read, suffix", [
    (export.write_graphml, export.read_graphml, "graphml"),
    (export.write_json, export.read_json, "json"),
])
@pytest.mark.parametrize("options", [dict(sample=0), dict(sample=None, aggregate="mean_abs", mass=0.8)])
def test_files_read_back_exactly(tmp_path, write, read, suffix, options):
    G = export.explanation_to_networkx(explained_cnn(), **options)
    # floats that need all 17 digits, and one that is tiny, survive exactly
    first = next(iter(G.edges))
    G.edges[first]["relevance"] = 0.1 + 0.2
    G.edges[first]["contribution"] = 5e-324
    path = tmp_path / f"explanation.{suffix}"
    write(G, path)
    assert_identical(G, read(path))


def test_graphml_is_plain_for_other_tools(tmp_path):
    G = export.explanation_to_networkx(explained_cnn(), 0)
    path = tmp_path / "explanation.graphml"
    export.write_graphml(G, path)
    plain = nx.read_graphml(path)  # what another reader sees: scalars only
    node = next(iter(plain.nodes(data=True)))[1]
    assert isinstance(node["position"], str) and "," in node["position"]
    assert isinstance(plain.graph["samples"], str)
    assert isinstance(G.nodes[next(iter(G))]["position"], tuple)  # the graph written is left unchanged


def test_empty_position_round_trips(tmp_path):
    G = nx.DiGraph(samples=())
    G.add_node(0, id=0, position=())
    for write, read, name in [(export.write_graphml, export.read_graphml, "g.graphml"),
                              (export.write_json, export.read_json, "g.json")]:
        write(G, tmp_path / name)
        assert_identical(G, read(tmp_path / name))


def test_bulk_export_of_a_hundred_thousand_edges():
    explanation = explained_mlp(batch=2, sizes=(300, 300, 30), dtype=torch.float32)
    assert explanation.graph.num_edges == 99_000
    started = time.perf_counter()
    G = export.explanation_to_networkx(explanation, 0)
    elapsed = time.perf_counter() - started
    print(f"\nexported {G.number_of_edges():,} edges in {elapsed:.2f} s")
    assert G.number_of_edges() == 99_000 and G.number_of_nodes() == 630
    src, dst, _ = explanation.graph.edges()
    messages = explanation.edge_relevance(0)
    assert G.edges[int(src[-1]), int(dst[-1])]["relevance"] == float(messages[-1])


def test_explanation_methods_delegate_to_export():
    import torch.nn as nn

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)).double()
    x = torch.randn(2, 3, dtype=torch.float64)
    explanation = graphlrp.explain(graphlrp.lower(model, x), x, target=1)
    G = explanation.to_networkx(0)
    assert G.number_of_edges() == explanation.graph.num_edges
    torch.testing.assert_close(explanation.bias_relevance(0), graphlrp.export.bias_relevance(explanation, 0))
    torch.testing.assert_close(explanation.edge_contributions(0), graphlrp.export.edge_contributions(explanation, 0))

"""``graph_from_edges``: any DAG as edge lists, checked against per-edge loops in float64.

The references below compute the forward pass and every LRP rule node by node and edge by edge,
from the formulas in :mod:`graphlrp.rules`' docstrings, on small random DAGs with skip edges,
constant nodes (no incoming edges), mixed activations and inputs in a shuffled order.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import graphlrp
from graphlrp import rules
from graphlrp.activations import ACTIVATIONS
from graphlrp.lower.edges import CycleError, graph_from_edges

HIDDEN_ACTIVATIONS = ("identity", "relu", "tanh", "neat_sigmoid", "leaky_relu")


@dataclass
class Dag:
    """A random network as edge lists over node ids ``0 .. n-1``, with its topological order."""

    n: int
    src: np.ndarray
    dst: np.ndarray
    weight: np.ndarray
    bias: np.ndarray
    activation: list[str]
    inputs: np.ndarray
    outputs: np.ndarray
    topological: np.ndarray

    def build(self, **kwargs) -> graphlrp.Graph:
        return graph_from_edges(self.src, self.dst, self.weight, bias=self.bias, activation=self.activation,
                                inputs=self.inputs, outputs=self.outputs, **kwargs)

    def incoming(self, node: int) -> list[tuple[int, float]]:
        return [(int(s), float(w)) for s, d, w in zip(self.src, self.dst, self.weight) if d == node]


def random_dag(
    seed: int,
    n: int = 12,
    n_inputs: int = 3,
    edge_probability: float = 0.35,
    activations: tuple[str, ...] = HIDDEN_ACTIVATIONS,
    output_activation: str | None = None,
    constants: bool = True,
) -> Dag:
    """A random DAG: node ids shuffled against the topological order, skip edges of every length.

    Without ``constants`` every non-input node gets at least one incoming edge.
    """
    rng = np.random.default_rng(seed)
    topological = rng.permutation(n)
    edges = []
    for position in range(n_inputs, n):
        earlier = [p for p in range(position) if rng.random() < edge_probability]
        if not earlier and not constants:
            earlier = [int(rng.integers(position))]
        edges += [(int(topological[p]), int(topological[position])) for p in earlier]
    src, dst = np.array(edges, dtype=np.int64).reshape(-1, 2).T
    inputs = rng.permutation(topological[:n_inputs])
    outputs = rng.choice(topological[n_inputs:], size=min(2, n - n_inputs), replace=False)
    activation = [str(rng.choice(activations)) for _ in range(n)]
    bias = rng.normal(0, 0.5, n)
    for node in inputs:
        activation[node], bias[node] = "identity", 0.0
    if output_activation is not None:
        for node in outputs:
            activation[node] = output_activation
    return Dag(n, src, dst, rng.normal(0, 1, len(src)), bias, activation, inputs, outputs, topological)


# -- references: one node, one edge at a time -------------------------------------------------------
def activate(name: str, z: float) -> float:
    return float(ACTIVATIONS[name](torch.tensor(z, dtype=torch.float64)))


def reference_forward(dag: Dag, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pre-activations and outputs of every node for one sample ``x`` (input order)."""
    z, a = np.zeros(dag.n), np.zeros(dag.n)
    a[dag.inputs] = x
    inputs = set(dag.inputs.tolist())
    for node in dag.topological:
        if node in inputs:
            continue
        z[node] = dag.bias[node] + sum(w * a[s] for s, w in dag.incoming(node))
        a[node] = activate(dag.activation[node], z[node])
    return z, a


def pos(v: float) -> float:
    return max(v, 0.0)


def neg(v: float) -> float:
    return min(v, 0.0)


def reference_groups(rule: rules.Rule, a: list[float], w: list[float], b: float, z: float):
    """``(scale, contributions c_ij, bias term β_j)`` of each group, written out from the docstrings."""
    b = 0.0 if getattr(rule, "zero_bias", False) else b
    if isinstance(rule, rules.Epsilon):
        return [(1.0, [ai * wi for ai, wi in zip(a, w)], b)]
    if isinstance(rule, rules.ZPlus):
        return [(1.0, [pos(ai) * pos(wi) + neg(ai) * neg(wi) for ai, wi in zip(a, w)], pos(b))]
    if isinstance(rule, rules.AlphaBeta):
        positive = [pos(ai) * pos(wi) + neg(ai) * neg(wi) for ai, wi in zip(a, w)]
        negative = [pos(ai) * neg(wi) + neg(ai) * pos(wi) for ai, wi in zip(a, w)]
        return [(rule.alpha, positive, pos(b)), (-rule.beta, negative, neg(b))]
    if isinstance(rule, rules.Gamma):
        g = rule.gamma
        if z > 0:
            return [(1.0, [pos(ai) * (wi + g * pos(wi)) + neg(ai) * (wi + g * neg(wi)) for ai, wi in zip(a, w)],
                     b + g * pos(b))]
        if z < 0:
            return [(1.0, [pos(ai) * (wi + g * neg(wi)) + neg(ai) * (wi + g * pos(wi)) for ai, wi in zip(a, w)],
                     b + g * neg(b))]
        return []
    if isinstance(rule, rules.WSquare):
        return [(1.0, [wi * wi for wi in w], b * b)]
    if isinstance(rule, rules.Flat):
        return [(1.0, [1.0 if wi != 0 else 0.0 for wi in w], 0.0)]
    raise NotImplementedError(rule)


def stabilize(rule: rules.Rule, denominator: float) -> float:
    return denominator + rule.epsilon * (1.0 if denominator >= 0 else -1.0)


@dataclass
class ReferenceLRP:
    relevance: np.ndarray  # per node
    messages: dict[tuple[int, int], float]  # per edge
    smallest_denominator: float  # |denominator| of groups passing nonzero relevance


def reference_lrp(dag: Dag, x: np.ndarray, target: int, rule: rules.Rule) -> ReferenceLRP:
    """LRP by explicit loops: the target output's value enters at its node, flows back edge by edge."""
    z, a = reference_forward(dag, x)
    relevance = np.zeros(dag.n)
    out = int(dag.outputs[target])
    relevance[out] = a[out]
    messages = {(int(s), int(d)): 0.0 for s, d in zip(dag.src, dag.dst)}
    smallest = math.inf
    inputs = set(dag.inputs.tolist())
    for node in dag.topological[::-1]:
        incoming = dag.incoming(node)
        if node in inputs or not incoming:
            continue
        sources = [s for s, _ in incoming]
        groups = reference_groups(rule, [a[s] for s in sources], [w for _, w in incoming], dag.bias[node], z[node])
        for scale, contributions, beta in groups:
            denominator = stabilize(rule, sum(contributions) + beta)
            if relevance[node] != 0:
                smallest = min(smallest, abs(denominator))
            if denominator == 0:
                continue
            for source, c in zip(sources, contributions):
                message = scale * c / denominator * relevance[node]
                relevance[source] += message
                messages[(source, int(node))] += message
    return ReferenceLRP(relevance, messages, smallest)


def assert_close(actual, expected, tolerance: float = 1e-9) -> None:
    actual, expected = np.asarray(actual, dtype=np.float64), np.asarray(expected, dtype=np.float64)
    scale = max(1.0, float(np.abs(expected).max(initial=0.0)))
    error = float(np.abs(actual - expected).max(initial=0.0))
    assert error <= tolerance * scale, f"max error {error:.3g} > {tolerance:.1g} × {scale:.3g}"


def in_caller_ids(graph: graphlrp.Graph, per_graph_node: torch.Tensor) -> np.ndarray:
    """Reorder a per-graph-node vector to the caller's node ids."""
    result = np.zeros(graph.num_nodes)
    result[graph.original_ids.numpy()] = per_graph_node.detach().numpy()
    return result


# -- forward --------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(6))
def test_forward_equals_node_by_node_loop(kernel, seed):
    dag = random_dag(seed, n=14, n_inputs=3)
    graph = dag.build(block_kind=kernel)
    x = np.random.default_rng(100 + seed).normal(size=(7, 3))
    out = graph(torch.from_numpy(x))
    expected = [reference_forward(dag, row)[1][dag.outputs] for row in x]
    assert out.shape == (7, 2)
    assert_close(out, expected, 1e-12)


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    n=st.integers(2, 16),
    n_inputs=st.integers(1, 4),
    edge_probability=st.floats(0.0, 1.0),
    block_kind=st.sampled_from(["sparse", "edges", "dense"]),
)
def test_forward_property(seed, n, n_inputs, edge_probability, block_kind):
    n_inputs = min(n_inputs, n - 1)
    dag = random_dag(seed, n=n, n_inputs=n_inputs, edge_probability=edge_probability, constants=False)
    graph = dag.build(block_kind=block_kind)
    x = np.random.default_rng(seed).normal(size=(3, n_inputs))
    expected = [reference_forward(dag, row)[1][dag.outputs] for row in x]
    assert_close(graph(torch.from_numpy(x)), expected, 1e-12)
    assert graph.levels[0].size == n_inputs
    for block in graph.blocks:  # every edge goes to a later level: the levels are a topological order
        assert block.src < block.dst


def test_levels_group_by_depth_and_keep_inputs_in_order():
    # 5 -> 0 -> 3, 5 -> 3 (skip), 4 -> 0, 2 has no incoming edges (a constant), 1 is an unused input
    graph = graph_from_edges([5, 0, 5, 4, 2], [0, 3, 3, 0, 3], [1.0, 2.0, 3.0, 4.0, 5.0],
                             bias=[0.5, 0, 1.0, -1, 0, 0], inputs=[4, 5, 1], outputs=[3])
    assert graph.original_ids.tolist() == [4, 5, 1, 0, 2, 3]
    assert [level.name for level in graph.levels] == ["input", "depth 1", "depth 2"]
    assert [level.size for level in graph.levels] == [3, 2, 1]
    assert [level.layer_type for level in graph.levels] == ["input", "node", "node"]
    x = torch.tensor([[1.0, 2.0, 7.0]])  # node 4 = 1, node 5 = 2, node 1 = 7
    node0 = 0.5 + 1 * 2 + 4 * 1
    assert graph(x).item() == pytest.approx(-1 + 2 * node0 + 3 * 2 + 5 * 1.0)
    explanation = graphlrp.explain(graph, x, target=0, rule=rules.Epsilon(0, zero_bias=True))
    assert explanation.input_relevance.shape == (1, 3)  # in the given input order
    assert explanation.input_relevance[0, 2].item() == 0.0  # the unused input


def test_mixed_activations_at_one_depth_make_one_level_each():
    graph = graph_from_edges([0, 0, 1], [1, 2, 3], [1.0, -1.0, 2.0], activation=["identity", "relu", "tanh", "relu"],
                             inputs=[0], outputs=[2, 3])
    assert [(l.name, l.activation.name) for l in graph.levels] == [
        ("input", "identity"), ("depth 1 (relu)", "relu"), ("depth 1 (tanh)", "tanh"), ("depth 2", "relu")]
    x = torch.tensor([[0.5], [-0.5]])
    expected = torch.stack([torch.tanh(-x[:, 0]), torch.relu(2 * torch.relu(x[:, 0]))], dim=1)
    torch.testing.assert_close(graph(x), expected)


def test_defaults_inputs_are_sources_outputs_are_sinks_and_ids_can_be_any_array():
    src, dst = np.array([2, 2, 0]), torch.tensor([0, 1, 1])
    graph = graph_from_edges(src, dst, [1.0, 2.0, 3.0])
    assert graph.original_ids[: graph.levels[0].size].tolist() == [2]
    assert graph.original_ids[graph.outputs].tolist() == [1]
    assert graph(torch.tensor([[1.0]])).item() == pytest.approx(2 + 3 * 1)


def test_duplicate_edges_are_summed_and_zero_weights_are_no_edge():
    graph = graph_from_edges([0, 0, 1, 0], [2, 2, 2, 3], [1.0, 2.5, 0.0, 4.0], inputs=[0, 1], outputs=[2, 3])
    assert graph.num_edges == 2
    src, dst, weight = graph.edges()
    edges = {(int(graph.original_ids[s]), int(graph.original_ids[d])): float(w) for s, d, w in zip(src, dst, weight)}
    assert edges == {(0, 2): 3.5, (0, 3): 4.0}


def test_outputs_anywhere_even_unreachable_ones():
    # output 3 is a constant node act(b); output 0 is an input; output 1 is hidden
    graph = graph_from_edges([0, 1], [1, 2], [2.0, 3.0], bias=[0, 0.5, 0, -2.0], activation="relu",
                             inputs=[0], outputs=[2, 3, 0, 1])
    x = torch.tensor([[1.0], [-1.0]])
    expected = torch.tensor([[3 * 2.5, 0.0, 1.0, 2.5], [0.0, 0.0, -1.0, 0.0]])
    torch.testing.assert_close(graph(x), expected)


def test_dtype_follows_weights_or_argument():
    assert graph_from_edges([0], [1], np.array([1.0])).dtype == torch.float64
    assert graph_from_edges([0], [1], [1.0]).dtype == torch.get_default_dtype()
    assert graph_from_edges([0], [1], torch.tensor([1.0]), dtype=torch.float64).dtype == torch.float64


def test_names_are_kept_and_name_nodes_in_errors():
    graph = graph_from_edges([0], [1], [1.0], names=["x", "y"])
    assert graph.node_names == ["x", "y"]
    with pytest.raises(CycleError, match="'b' -> 'c' -> 'b'|'c' -> 'b' -> 'c'"):
        graph_from_edges([0, 1, 2], [1, 2, 1], [1.0] * 3, names=["a", "b", "c"])


# -- relevance --------------------------------------------------------------------------------------
RULES = [
    rules.Epsilon(0.1),
    rules.Epsilon(1e-3, zero_bias=True),
    rules.Epsilon(0.0),
    rules.ZPlus(),
    rules.ZPlus(zero_bias=True),
    rules.AlphaBeta(2, 1),
    rules.AlphaBeta(1, 0),
    rules.Gamma(0.25),
    rules.Gamma(1.0, zero_bias=True),
    rules.WSquare(),
    rules.Flat(),
]


def safe_rows(dag: Dag, x: np.ndarray, threshold: float = 0.05) -> np.ndarray:
    """Rows whose every pre-activation of a node with incoming edges is away from zero (LRP-0's
    denominators, bias included)."""
    summing = np.unique(dag.dst)
    keep = [np.abs(reference_forward(dag, row)[0][summing]).min() > threshold for row in x]
    return x[np.array(keep)]


@pytest.mark.parametrize("rule", RULES, ids=repr)
@pytest.mark.parametrize("seed", [0, 1])
def test_relevance_of_every_node_and_edge_equals_per_edge_loops(kernel, rule, seed):
    dag = random_dag(seed, n=12, n_inputs=3)
    graph = dag.build(block_kind=kernel)
    x = safe_rows(dag, np.random.default_rng(10 + seed).normal(size=(8, 3)))[:4]
    assert len(x) >= 2
    target = seed % 2
    explanation = graphlrp.explain(graph, torch.from_numpy(x), target=target, rule=rule)
    src, dst, _ = graph.edges()
    edge_ids = list(zip(graph.original_ids[src].tolist(), graph.original_ids[dst].tolist()))
    for b, row in enumerate(x):
        reference = reference_lrp(dag, row, target, rule)
        assert_close(in_caller_ids(graph, explanation.node_relevance[b]), reference.relevance)
        assert_close(explanation.edge_relevance(b).numpy(), [reference.messages[e] for e in edge_ids])
        assert_close(explanation.input_relevance[b].numpy(), reference.relevance[dag.inputs])
    assert sorted(edge_ids) == sorted(reference.messages)


@pytest.mark.parametrize("rule", [rules.Epsilon(1e-9, zero_bias=True), rules.ZPlus(1e-9, zero_bias=True),
                                  rules.AlphaBeta(2, 1, 1e-9, zero_bias=True)], ids=repr)
@pytest.mark.parametrize("seed", [1, 3])
def test_relevance_is_conserved_across_skip_edges(rule, seed):
    # dense enough that most nodes have contributions of both signs (αβ drops a node's relevance
    # when either of its parts has a zero denominator)
    dag = random_dag(seed, n=12, n_inputs=4, edge_probability=0.8, activations=("relu",),
                     output_activation="identity", constants=False)
    graph = dag.build()
    assert any(block.dst - block.src > 1 for block in graph.blocks)  # there are skip edges
    x = np.random.default_rng(seed).normal(size=(32, 4))
    explanation = graphlrp.explain(graph, torch.from_numpy(x), target=0, rule=rule)
    total = explanation.input_relevance.sum(1).numpy()
    output = explanation.output[:, 0].numpy()
    # samples whose denominators are all away from zero: nothing is dropped, ε takes ~nothing
    safe = np.array([reference_lrp(dag, row, 0, rule).smallest_denominator > 1e-2 for row in x])
    assert safe.sum() >= 8
    np.testing.assert_allclose(total[safe], output[safe], rtol=1e-6, atol=1e-9)
    assert np.abs(output[safe]).max() > 0.1


# -- errors ---------------------------------------------------------------------------------------
def test_cycle_is_named():
    src, dst = [0, 1, 2, 3, 4, 2], [1, 2, 3, 4, 2, 5]
    with pytest.raises(CycleError) as caught:
        graph_from_edges(src, dst, [1.0] * 6, inputs=[0])
    cycle = caught.value.cycle
    assert sorted(cycle) == [2, 3, 4]
    edges = set(zip(src, dst))
    assert all((u, v) in edges for u, v in zip(cycle, cycle[1:] + cycle[:1]))
    assert isinstance(caught.value, ValueError)
    assert " -> ".join(map(str, cycle)) in str(caught.value)


def test_self_loop_is_a_cycle():
    with pytest.raises(CycleError, match="1 -> 1"):
        graph_from_edges([0, 1], [1, 1], [1.0, 1.0], inputs=[0])


def test_edge_into_an_input_is_rejected():
    with pytest.raises(ValueError, match="edges end at input nodes.*2 -> 0"):
        graph_from_edges([1, 2], [2, 0], [1.0, 1.0], inputs=[0, 1], outputs=[2])


def test_unknown_activation_lists_known_ones():
    with pytest.raises(ValueError, match="unknown activation 'swishy'.*relu"):
        graph_from_edges([0], [1], [1.0], activation="swishy")
    with pytest.raises(ValueError, match="unknown activation 'nope'"):
        graph_from_edges([0], [1], [1.0], activation=["identity", "nope"])


@pytest.mark.parametrize("kwargs,message", [
    (dict(src=[0, 1], dst=[1], weight=[1.0]), "one entry per edge"),
    (dict(src=[0], dst=[1], weight=[1.0, 2.0]), "one entry per edge"),
    (dict(src=[0], dst=[1], weight=[1.0], bias=[0.0]), r"node id 1 is out of range: len\(bias\) = 1"),
    (dict(src=[0], dst=[1], weight=[1.0], bias=[0.0] * 3, activation=["identity"] * 2), "disagree"),
    (dict(src=[0], dst=[3], weight=[1.0], activation=["identity"] * 3), "out of range"),
    (dict(src=[0], dst=[1], weight=[1.0], outputs=[5], bias=[0, 0]), "node id 5 is out of range"),
    (dict(src=[0, -1], dst=[1, 1], weight=[1.0, 1.0]), "negative node id -1"),
    (dict(src=[0], dst=[1], weight=[float("nan")]), "weight holds NaN"),
    (dict(src=[0], dst=[1], weight=[1.0], bias=[0.0, float("inf")]), "bias holds NaN or inf"),
    (dict(src=[0], dst=[1], weight=[1.0], inputs=[0, 0]), "more than once"),
    (dict(src=[0], dst=[1], weight=[1.0], inputs=[]), "inputs is empty"),
    (dict(src=[0], dst=[1], weight=[1.0], outputs=[]), "outputs is empty"),
    (dict(src=[0], dst=[1], weight=[1.0], bias=[0.5, 0.0]), "input nodes .* nonzero bias"),
    (dict(src=[0], dst=[1], weight=[1.0], activation=["relu", "relu"]), "must have activation 'identity'"),
    (dict(src=[0], dst=[1], weight=[1.0], block_kind="csr"), "unknown block_kind"),
    (dict(src=[0, 1], dst=[1, 0], weight=[1.0, 1.0], inputs=[0]), "end at input"),
    (dict(src=[0], dst=[1], weight=[[1.0]]), "one-dimensional"),
])
def test_bad_arguments_raise_value_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        graph_from_edges(**kwargs)


def test_non_integer_ids_raise_type_error():
    with pytest.raises(TypeError, match="integer node ids"):
        graph_from_edges([0.0], [1.0], [1.0])


# -- scale ----------------------------------------------------------------------------------------
def test_many_edges_deep_graph_matches_layer_by_layer_sums():
    """200k edges over 40 layers with skip edges of every length, ids shuffled against the layers."""
    rng = np.random.default_rng(0)
    width, depth, per_layer = 500, 40, 5000
    layer_of = np.repeat(np.arange(depth + 1), width)
    node_ids = rng.permutation(width * (depth + 1))
    dst_pos = rng.integers(width, width * (depth + 1), size=per_layer * depth)
    src_pos = rng.integers(0, width * layer_of[dst_pos])  # from any earlier layer
    weight = rng.normal(0, 0.1, len(dst_pos))
    graph = graph_from_edges(node_ids[src_pos], node_ids[dst_pos], weight, inputs=node_ids[:width],
                             outputs=node_ids[-width:], activation="tanh")
    x = rng.normal(size=(2, width))
    values = np.zeros((2, width * (depth + 1)))
    values[:, :width] = x
    for layer in range(1, depth + 1):
        into = layer_of[dst_pos] == layer
        z = np.zeros((width, 2))
        np.add.at(z, dst_pos[into] - layer * width, (values[:, src_pos[into]] * weight[into]).T)
        values[:, layer * width : (layer + 1) * width] = np.tanh(z.T)
    assert_close(graph(torch.from_numpy(x)), values[:, -width:], 1e-10)

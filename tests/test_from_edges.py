"""``graph_from_edges``: any DAG as edge lists, checked against independent references in float64.

The forward pass is checked against a node-by-node loop on small random DAGs with skip edges,
constant nodes (no incoming edges), mixed activations and inputs in a shuffled order. Relevance is
checked against the rules' dense matrix formulas (the paper's, as Zennit defines them), applied
depth by depth, on layered DAGs whose every depth, most nodes and most skip edges carry relevance.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import graphlrp
from graphlrp import rules
from graphlrp.activations import ACTIVATIONS
from graphlrp.frontends.edges import CycleError, graph_from_edges

HIDDEN_ACTIVATIONS = ("identity", "relu", "tanh", "neat_sigmoid", "leaky_relu")
#: activations of the layered DAGs: mixed signs (tanh, leaky ReLU, identity) and positive (sigmoid), none dead
LAYERED_ACTIVATIONS = ("tanh", "leaky_relu", "identity", "sigmoid")


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


def layered_dag(seed: int, widths: tuple[int, ...] = (4, 5, 5, 4, 2), previous_probability: float = 0.9,
                skip_probability: float = 0.5, activations: tuple[str, ...] = LAYERED_ACTIVATIONS) -> Dag:
    """A DAG of ``len(widths)`` depths, ids shuffled: each node receives from the depth just before
    (at least one edge, so its depth is exact) and, by skip edges, from every earlier depth.

    Hidden activations are of mixed sign and never dead, so relevance reaches every depth.
    """
    rng = np.random.default_rng(seed)
    n = sum(widths)
    ids = rng.permutation(n)
    bounds = np.cumsum((0,) + widths)
    depths = [ids[bounds[d]:bounds[d + 1]] for d in range(len(widths))]
    edges = []
    for d in range(1, len(widths)):
        for j in depths[d]:
            previous = [i for i in depths[d - 1] if rng.random() < previous_probability] or [rng.choice(depths[d - 1])]
            skips = [i for e in range(d - 1) for i in depths[e] if rng.random() < skip_probability]
            edges += [(int(i), int(j)) for i in previous + skips]
    src, dst = np.array(edges, dtype=np.int64).T
    activation = [str(rng.choice(activations)) for _ in range(n)]
    bias = rng.normal(0, 0.5, n)
    for node in depths[0]:
        activation[node], bias[node] = "identity", 0.0
    for node in depths[-1]:
        activation[node] = "identity"
    return Dag(n, src, dst, rng.normal(0, 1, len(src)), bias, activation, depths[0], depths[-1],
               np.concatenate(depths))


# -- forward reference: one node at a time -----------------------------------------------------------
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


# -- dense references: the rules' matrix formulas (Montavon et al. 2019; Zennit), depth by depth --
def node_depths(dag: Dag) -> np.ndarray:
    """Longest path from a node without incoming edges (inputs and constants have depth 0)."""
    depth = np.zeros(dag.n, dtype=np.int64)
    for node in dag.topological:
        sources = dag.src[dag.dst == node]
        if len(sources):
            depth[node] = 1 + depth[sources].max()
    return depth


def dense_weights(dag: Dag) -> np.ndarray:
    """``W[i, j]``: the weight of the edge ``i → j`` (duplicates summed), 0 where there is none."""
    W = np.zeros((dag.n, dag.n))
    np.add.at(W, (dag.src, dag.dst), dag.weight)
    return W


def depth_groups(dag: Dag) -> list[np.ndarray]:
    """The non-input nodes of each depth: no node of a group feeds another node of it."""
    depth = node_depths(dag)
    computed = ~np.isin(np.arange(dag.n), dag.inputs)
    return [np.flatnonzero((depth == d) & computed) for d in range(depth.max() + 1)]


def dense_forward(dag: Dag, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pre-activations ``Z = A W + b`` and outputs ``A`` of every node, ``(B, n)`` each."""
    W = dense_weights(dag)
    Z, A = np.zeros((len(x), dag.n)), np.zeros((len(x), dag.n))
    A[:, dag.inputs] = x
    for group in depth_groups(dag):
        Z[:, group] = A @ W[:, group] + dag.bias[group]
        for j in group:
            A[:, j] = ACTIVATIONS[dag.activation[j]](torch.from_numpy(Z[:, j])).numpy()
    return Z, A


def plus(v: np.ndarray) -> np.ndarray:
    return np.maximum(v, 0.0)


def minus(v: np.ndarray) -> np.ndarray:
    return np.minimum(v, 0.0)


def dense_groups(rule: rules.Rule, A: np.ndarray, W: np.ndarray, b: np.ndarray, z: np.ndarray):
    """``(scale, C, β, served)`` of each group of ``rule`` into the destinations of ``W (n, m)``:
    contributions ``C[s, i, j]`` of source ``i`` to destination ``j`` in sample ``s``, the bias
    term ``β_j`` and the destinations the group serves, written out from the paper's formulas
    (lrp-rules.md) with ``x⁺ = plus(x)``, ``x⁻ = minus(x)``."""
    a, w = A[:, :, None], W[None]
    b = np.zeros_like(b) if getattr(rule, "zero_bias", False) else b
    every = np.ones(z.shape, dtype=bool)
    weights_only = getattr(rule, "weights_only", False)
    if isinstance(rule, rules.Norm):  # Zennit's Norm: no bias term, whatever the rule's flags
        return [(1.0, a * w, np.zeros_like(b), every)]
    if isinstance(rule, rules.Epsilon):
        return [(1.0, a * w, b, every)]
    if isinstance(rule, rules.ZPlus):
        c = a * plus(w) if weights_only else plus(a) * plus(w) + minus(a) * minus(w)
        return [(1.0, c, plus(b), every)]
    if isinstance(rule, rules.AlphaBeta):
        positive = a * plus(w) if weights_only else plus(a) * plus(w) + minus(a) * minus(w)
        negative = a * minus(w) if weights_only else plus(a) * minus(w) + minus(a) * plus(w)
        return [(rule.alpha, positive, plus(b), every), (-rule.beta, negative, minus(b), every)]
    if isinstance(rule, rules.Gamma):
        g = rule.gamma
        up, down = w + g * plus(w), w + g * minus(w)
        if weights_only:  # Captum's: W↑ for every destination, whatever its sign
            return [(1.0, a * up, b + g * plus(b), every)]
        return [(1.0, plus(a) * up + minus(a) * down, b + g * plus(b), z > 0),
                (1.0, plus(a) * down + minus(a) * up, b + g * minus(b), z < 0)]
    if isinstance(rule, rules.ZBox):  # the bias terms b − b⁺ − b⁻ cancel
        low, high = (np.broadcast_to(bound.numpy(), A.shape[1:])[None, :, None] for bound in (rule.low, rule.high))
        return [(1.0, a * w - low * plus(w) - high * minus(w), np.zeros_like(b), every)]
    ones = np.ones_like(a)
    if isinstance(rule, rules.WSquare):
        return [(1.0, ones * w * w, b * b, every)]
    if isinstance(rule, (rules.Flat, rules.Pass)):
        return [(1.0, ones * (w != 0), np.zeros_like(b), every)]
    raise NotImplementedError(rule)


def stabilize(rule: rules.Rule, denominator: np.ndarray) -> np.ndarray:
    if rule.stabilizer == "plain":
        return denominator + rule.epsilon
    return denominator + rule.epsilon * np.where(denominator >= 0, 1.0, -1.0)


@dataclass
class ReferenceLRP:
    relevance: np.ndarray  # (B, n) per node
    messages: np.ndarray  # (B, n, n): messages[s, i, j] of the edge i → j
    smallest_denominator: np.ndarray  # (B,) |stabilized denominator| of the groups serving nodes with relevance
    smallest_contributing: np.ndarray  # (B,) the same over the groups with a nonzero contribution there
    preactivation: np.ndarray  # (B, n)


def dense_lrp(dag: Dag, x: np.ndarray, target: int, rule: rules.Rule) -> ReferenceLRP:
    """LRP as matrices: the target output's value enters at its node; depth by depth, from the deepest,
    ``R_i += Σ_g scale_g Σ_j C_ij / stab(Σ_i C_ij + β_j) · R_j`` over the destinations ``j`` the group serves."""
    Z, A = dense_forward(dag, x)
    W = dense_weights(dag)
    relevance = np.zeros((len(x), dag.n))
    out = dag.outputs[target]
    relevance[:, out] = A[:, out]
    messages = np.zeros((len(x), dag.n, dag.n))
    smallest, contributing = np.full(len(x), np.inf), np.full(len(x), np.inf)
    for group in depth_groups(dag)[:0:-1]:
        for scale, C, beta, served in dense_groups(rule, A, W[:, group], dag.bias[group], Z[:, group]):
            denominator = stabilize(rule, C.sum(1) + beta)
            live = served & (relevance[:, group] != 0)
            smallest = np.minimum(smallest, np.where(live, np.abs(denominator), np.inf).min(1, initial=np.inf))
            live &= np.abs(C).sum(1) > 0
            contributing = np.minimum(contributing, np.where(live, np.abs(denominator), np.inf).min(1, initial=np.inf))
            nonzero = served & (denominator != 0)
            quotient = np.where(nonzero, relevance[:, group] / np.where(nonzero, denominator, 1.0), 0.0)
            message = scale * C * quotient[:, None, :]
            messages[:, :, group] += message
            relevance += message.sum(2)
    return ReferenceLRP(relevance, messages, smallest, contributing, Z)


def assert_close(actual, expected, tolerance: float = 1e-9) -> None:
    actual, expected = np.asarray(actual, dtype=np.float64), np.asarray(expected, dtype=np.float64)
    scale = max(1.0, float(np.abs(expected).max(initial=0.0)))
    error = float(np.abs(actual - expected).max(initial=0.0))
    assert error <= tolerance * scale, f"max error {error:.3g} > {tolerance:.1g} × {scale:.3g}"


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
    rules.Epsilon(0.05, stabilizer="plain"),
    rules.ZPlus(),
    rules.ZPlus(zero_bias=True),
    rules.ZPlus(weights_only=True),
    rules.AlphaBeta(2, 1),
    rules.AlphaBeta(1, 0),
    rules.AlphaBeta(3, 2, zero_bias=True),
    rules.AlphaBeta(2, 1, weights_only=True),
    rules.Gamma(0.25),
    rules.Gamma(1.0, zero_bias=True),
    rules.Gamma(0.5, weights_only=True),
    rules.Gamma(0.5, weights_only=True, zero_bias=True),
    rules.WSquare(),
    rules.Flat(),
    rules.Pass(),
]
#: layered DAGs on which every rule of :data:`RULES` gives relevance to most nodes (the sign-splitting
#: rules z⁺ and αβ pass none through an edge whose input and weight differ in sign)
LAYERED_SEEDS = (4, 7)
#: float64 agreement with the dense reference, relative to the largest |relevance|: measured at most
#: 9e-15, except weights-only αβ at 1.1e-11 (its β denominator ``a·W⁻`` is computed as ``a·W − a·W⁺``
#: on mixed-sign inputs, and its α and β parts then cancel)
RELEVANCE_TOLERANCE = 1e-13
WEIGHTS_ONLY_ALPHA_BETA_TOLERANCE = 1e-10


def relevance_tolerance(rule: rules.Rule) -> float:
    if isinstance(rule, rules.AlphaBeta) and rule.weights_only:
        return WEIGHTS_ONLY_ALPHA_BETA_TOLERANCE
    return RELEVANCE_TOLERANCE


@functools.lru_cache(maxsize=None)
def layered_case(seed: int) -> tuple[Dag, np.ndarray]:
    """The layered DAG of ``seed`` and 64 mixed-sign input rows for it."""
    return layered_dag(seed), np.random.default_rng(50 + seed).normal(size=(64, 4))


@functools.lru_cache(maxsize=None)
def layered_graph(seed: int, block_kind: str) -> graphlrp.Graph:
    return layered_case(seed)[0].build(block_kind=block_kind)


def well_conditioned(reference: ReferenceLRP, dag: Dag, threshold: float = 0.05) -> np.ndarray:
    """Rows whose denominators (of every group with contributions to a node with relevance) and
    pre-activations (which decide the γ rule's groups) are all at least ``threshold`` from zero."""
    summing = np.unique(dag.dst)
    return (reference.smallest_contributing > threshold) & (np.abs(reference.preactivation[:, summing]).min(1) > threshold)


def compared_rows(reference: ReferenceLRP, dag: Dag) -> np.ndarray:
    """The rows the comparison uses: the first 6 well-conditioned ones."""
    rows = np.flatnonzero(well_conditioned(reference, dag))
    assert len(rows) >= 12
    return rows[:6]


def skip_edges(dag: Dag) -> np.ndarray:
    depth = node_depths(dag)
    return depth[dag.dst] - depth[dag.src] > 1


@pytest.mark.parametrize("rule", RULES, ids=repr)
@pytest.mark.parametrize("seed", LAYERED_SEEDS)
def test_reference_relevance_reaches_every_depth_node_and_skip_edge(rule, seed):
    """The reference below compares real values: relevance is nonzero at most nodes, at every depth
    and on skip edges, in every row the comparison uses."""
    dag, x = layered_case(seed)
    reference = dense_lrp(dag, x, seed % 2, rule)
    rows = compared_rows(reference, dag)
    relevance, messages = reference.relevance[rows], reference.messages[rows]
    scale = np.abs(relevance).max(1, keepdims=True)
    carries = np.abs(relevance) > 1e-9 * scale
    assert carries.mean() >= 0.75 and carries.mean(1).min() >= 0.7  # the other output carries none
    for group in [dag.inputs] + depth_groups(dag)[1:-1]:
        assert carries[:, group].any(1).all()
    skips = skip_edges(dag)
    assert skips.sum() >= 10
    skip_messages = messages[:, dag.src[skips], dag.dst[skips]]
    assert (np.abs(skip_messages) > 1e-9 * scale).mean() >= 0.25  # z⁺ passes none through about half the edges


@pytest.mark.parametrize("rule", RULES, ids=repr)
@pytest.mark.parametrize("seed", LAYERED_SEEDS)
def test_relevance_of_every_node_and_edge_equals_the_dense_reference(kernel, rule, seed):
    dag, x = layered_case(seed)
    target = seed % 2
    reference = dense_lrp(dag, x, target, rule)
    rows = compared_rows(reference, dag)
    graph = layered_graph(seed, kernel)
    explanation = graphlrp.explain(graph, torch.from_numpy(x[rows]), target=target, rule=rule)
    src, dst, _ = graph.edges()
    src, dst = graph.original_ids[src].numpy(), graph.original_ids[dst].numpy()
    tolerance = relevance_tolerance(rule)
    relevance = np.zeros((len(rows), dag.n))
    relevance[:, graph.original_ids.numpy()] = explanation.node_relevance.numpy()
    assert_close(relevance, reference.relevance[rows], tolerance)
    assert_close(explanation.edge_relevance().numpy(), reference.messages[rows][:, src, dst], tolerance)
    assert_close(explanation.input_relevance.numpy(), reference.relevance[rows][:, dag.inputs], tolerance)
    assert sorted(zip(src.tolist(), dst.tolist())) == sorted(zip(dag.src.tolist(), dag.dst.tolist()))


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
    safe = dense_lrp(dag, x, 0, rule).smallest_denominator > 1e-2
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

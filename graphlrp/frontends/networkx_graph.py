"""Networks as ``networkx.DiGraph`` s: :func:`from_networkx` and :func:`graph_to_networkx`.

A network is a directed acyclic graph whose edges carry a weight and whose nodes carry a bias and
an activation; ``G.graph['inputs']`` and ``G.graph['outputs']`` list the input and output nodes in
the order of the input's and output's last dimension.
"""
from __future__ import annotations

from typing import Hashable, Iterable, Sequence

import networkx as nx
import numpy as np
import torch

from ..activations import ACTIVATIONS, Activation
from ..errors import ArgumentTypeError, InputError
from ..graph import Graph
from .edges import checked_dtype, checked_number, graph_from_edges, merge_duplicate_edges


def from_networkx(
    G: nx.DiGraph,
    inputs: Sequence[Hashable] | None = None,
    outputs: Sequence[Hashable] | None = None,
    weight: str = "weight",
    bias: str = "bias",
    activation: str = "activation",
    block_kind: str = "sparse",
    dtype: torch.dtype | None = None,
) -> Graph:
    """Build a :class:`~graphlrp.Graph` from a directed acyclic ``networkx`` graph.

    Node ``j`` computes ``a_j = activation_j(Σ_i w_ij a_i + b_j)``; see
    :func:`graphlrp.frontends.edges.graph_from_edges`, which this calls. ``G`` is read, never modified.

    Parameters
    ----------
    G : networkx.DiGraph
        Nodes may be any hashable labels. Every edge needs the attribute ``weight`` (the parallel
        edges of a ``MultiDiGraph`` are summed).
    inputs, outputs : sequence of node labels, optional
        In the order of the input's and output's last dimension. Default: ``G.graph['inputs']``
        (``G.graph['outputs']``) when present, else the nodes with in-degree 0 (the non-input
        nodes with out-degree 0), sorted (in ``G``'s node order if the labels do not sort).
    weight : str
        Edge attribute holding the weight (required on every edge), a real number.
    bias : str
        Node attribute holding the bias (default 0), a real number.
    activation : str
        Node attribute holding the activation: a name from
        :data:`graphlrp.activations.ACTIVATIONS` or an :class:`~graphlrp.activations.Activation`
        (default ``'identity'``).
    block_kind : {'sparse', 'edges', 'dense'}
        How blocks of edges are held.
    dtype : torch.dtype, optional
        Floating dtype of the graph (default: torch's default dtype).

    Returns
    -------
    Graph
        With ``graph.node_names`` the label of every graph node and ``graph.original_ids`` its
        position in ``G.nodes``.

    Raises
    ------
    ArgumentTypeError
        (a ``TypeError``) if ``G`` is not a ``networkx.DiGraph`` (an undirected graph included),
        for a weight or bias that is not a real number, an activation that is neither a name nor
        an :class:`Activation`, or inputs or outputs that are not a sequence of node labels; the
        message names the edge or node.
    InputError
        (a ``ValueError``) for an edge without a weight, a NaN or inf weight or bias, an unknown
        activation, inputs or outputs that are not nodes of ``G``, and everything
        :func:`~graphlrp.frontends.edges.graph_from_edges` refuses (a cycle, named by its labels, an
        edge into an input, ...).
    NumericRangeError
        (an ``OverflowError``) for a weight or bias beyond the range of ``dtype`` (an integer too
        large for a float included), naming the edge or node.
    """
    if not isinstance(G, nx.DiGraph):
        undirected = "; an undirected graph's edges give relevance no direction" if isinstance(G, nx.Graph) else ""
        raise ArgumentTypeError(f"G must be a networkx.DiGraph (directed), got {type(G).__name__}{undirected}")
    dtype = checked_dtype(dtype) or torch.get_default_dtype()
    labels = list(G.nodes)
    index = {label: i for i, label in enumerate(labels)}
    src, dst, weights = _edge_lists(G, index, weight, dtype)
    inputs = _given_or_default(
        _node_list("inputs", inputs, G.graph.get("inputs")), (n for n, d in G.in_degree() if d == 0)
    )
    input_set = set(inputs or ())
    outputs = _given_or_default(
        _node_list("outputs", outputs, G.graph.get("outputs")),
        (n for n, d in G.out_degree() if d == 0 and n not in input_set),
    )
    return graph_from_edges(
        src,
        dst,
        torch.tensor(weights, dtype=dtype),
        bias=torch.tensor([checked_number(G.nodes[n].get(bias, 0.0), f"node {n!r}", bias, dtype) for n in labels],
                          dtype=dtype),
        activation=[_activation_of(n, G.nodes[n].get(activation, "identity"), activation) for n in labels],
        inputs=_ids_of("inputs", inputs, index),
        outputs=_ids_of("outputs", outputs, index),
        block_kind=block_kind,
        names=labels,
    )


def _edge_lists(
    G: nx.DiGraph, index: dict[Hashable, int], weight: str, dtype: torch.dtype
) -> tuple[np.ndarray, np.ndarray, list[float]]:
    src, dst, weights = [], [], []
    for u, v, data in G.edges(data=True):
        if weight not in data:
            raise InputError(f"edge {u!r} -> {v!r} has no {weight!r} attribute; every edge needs a weight")
        src.append(index[u])
        dst.append(index[v])
        weights.append(checked_number(data[weight], f"edge {u!r} -> {v!r}", weight, dtype))
    return np.asarray(src, dtype=np.int64), np.asarray(dst, dtype=np.int64), weights


def _activation_of(node: Hashable, value: object, attribute: Hashable) -> str | Activation:
    if isinstance(value, Activation):
        return value
    if not isinstance(value, str):
        raise ArgumentTypeError(f"node {node!r} has {attribute!r} = {value!r} ({type(value).__name__}); it must "
                                "be an activation name or a graphlrp Activation")
    if value not in ACTIVATIONS:
        raise InputError(f"node {node!r} has the unknown activation {value!r}; known activations: "
                         f"{', '.join(sorted(ACTIVATIONS))}")
    return value


def _node_list(role: str, given: object, stored: object) -> list[Hashable] | None:
    """The nodes given, else those stored in ``G.graph[role]``, as a list (``None`` if neither)."""
    nodes, where = (given, role) if given is not None else (stored, f"G.graph[{role!r}]")
    if nodes is None:
        return None
    if isinstance(nodes, (str, bytes, dict)) or not hasattr(nodes, "__iter__"):
        raise ArgumentTypeError(f"{where} must be a sequence of node labels, got {nodes!r} ({type(nodes).__name__})")
    listed = list(nodes)
    for node in listed:
        if not isinstance(node, Hashable):
            raise ArgumentTypeError(f"{where} holds {node!r}, which cannot be a node label (it is not hashable)")
    return listed


def _given_or_default(nodes: list[Hashable] | None, fallback: Iterable[Hashable]) -> list[Hashable] | None:
    """``nodes`` when given, else the fallback's sorted (``None`` if there are none)."""
    if nodes is not None:
        return nodes
    nodes = list(fallback)
    if not nodes:  # a cycle leaves no node to default to: graph_from_edges names it
        return None
    try:
        return sorted(nodes)
    except TypeError:  # labels of mixed types keep the graph's node order
        return nodes


def _ids_of(role: str, nodes: Sequence[Hashable] | None, index: dict[Hashable, int]) -> list[int] | None:
    if nodes is None:
        return None
    missing = [n for n in nodes if n not in index]
    if missing:
        raise InputError(f"{role} names nodes that are not in the graph: {missing[:5]}")
    return [index[n] for n in nodes]


def graph_to_networkx(graph: Graph) -> nx.DiGraph:
    """The network of ``graph`` as a ``networkx.DiGraph``, readable by :func:`from_networkx`.

    Nodes are labelled by ``graph.node_names`` when present, else by ``graph.original_ids``,
    else by global node id; they carry ``bias``, ``activation`` (its name when it is one of
    :data:`~graphlrp.activations.ACTIVATIONS`, else the :class:`Activation` itself) and ``level``.
    Edges carry ``weight``. ``G.graph['inputs']`` and ``G.graph['outputs']`` list the input and
    output nodes in order, so ``from_networkx(graph_to_networkx(graph))`` computes what
    ``graph`` computes (with input and output flattened to one dimension).

    Raises
    ------
    ArgumentTypeError
        If ``graph`` is not a :class:`~graphlrp.Graph`.
    InputError
        If the input level has an activation other than the identity (input nodes take the
        input values), or a block's edges depend on the sample (max pooling).
    """
    if not isinstance(graph, Graph):
        raise ArgumentTypeError(f"graph must be a graphlrp.Graph, got {type(graph).__name__}")
    first = graph.levels[0]
    if first.activation.name != "identity":
        raise InputError(
            f"the input level applies {first.activation.name!r}; a networkx graph holds inputs as plain values"
        )
    for block in graph.blocks:
        if not getattr(block, "linear_forward", True):
            raise InputError(f"{block!r} connects nodes differently per sample; a networkx graph holds fixed edges")
    labels = _labels(graph)
    G = nx.DiGraph()
    for level in graph.levels:
        biases = [0.0] * level.size if level.bias is None or level.index == 0 else level.bias.tolist()
        attributes = {"activation": _activation_attribute(level.activation), "level": level.index}
        G.add_nodes_from((labels[node], {**attributes, "bias": b}) for node, b in zip(level.nodes, biases))
    src, dst, weight = graph.edges()
    src, dst, weight = merge_duplicate_edges(src, dst, weight, graph.num_nodes)
    G.add_weighted_edges_from(
        (labels[s], labels[d], w) for s, d, w in zip(src.tolist(), dst.tolist(), weight.tolist())
    )
    G.graph["inputs"] = [labels[node] for node in first.nodes]
    G.graph["outputs"] = [labels[node] for node in graph.outputs.tolist()]
    return G


def _labels(graph: Graph) -> list[Hashable]:
    node_names = getattr(graph, "node_names", None)
    if node_names is not None:
        return list(node_names)
    original_ids = getattr(graph, "original_ids", None)
    if original_ids is not None:
        return original_ids.tolist()
    return list(range(graph.num_nodes))


def _activation_attribute(activation: Activation) -> str | Activation:
    return activation.name if ACTIVATIONS.get(activation.name) is activation.fn else activation

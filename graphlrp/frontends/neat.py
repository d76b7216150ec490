"""neat-python feed-forward networks as graphs: :func:`from_neat` and :func:`from_neat_network`.

A neat-python node computes ``activation(bias + response · Σ_i w_i a_i)`` (with the ``sum``
aggregation), which is ``activation(Σ_i (response · w_i) a_i + bias)``: the response is folded into
the weights of the node's incoming edges. Other aggregations are not weighted sums and are refused.

The graph computes exactly what ``neat.nn.FeedForwardNetwork.create(genome, config).activate``
computes: the network is built by neat-python itself, so disabled connections and nodes not
needed for the outputs are left out as neat-python leaves them out.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ..activations import Activation, activation_by_name
from ..errors import ArgumentTypeError, InputError, NumericRangeError
from ..graph import Graph
from .edges import checked_dtype, checked_number, graph_from_edges

if TYPE_CHECKING:  # pragma: no cover
    from neat.nn import FeedForwardNetwork


def _neat_sin(z: Tensor) -> Tensor:
    return torch.sin((5.0 * z).clamp(-60.0, 60.0))


def _neat_softplus(z: Tensor) -> Tensor:
    return 0.2 * torch.log1p(torch.exp((5.0 * z).clamp(-60.0, 60.0)))


def _neat_lelu(z: Tensor) -> Tensor:
    return F.leaky_relu(z, 0.005)


#: graphlrp activation computing each of neat-python's built-in activation functions
NEAT_ACTIVATIONS: dict[str, Activation] = {
    **{name: activation_by_name(name) for name in (
        "relu", "elu", "selu", "identity", "clamped", "inv", "log", "exp", "abs", "hat", "square", "cube", "gauss",
    )},
    "sigmoid": activation_by_name("neat_sigmoid"),
    "tanh": activation_by_name("neat_tanh"),
    "sin": Activation("neat_sin", _neat_sin),
    "softplus": Activation("neat_softplus", _neat_softplus),
    "lelu": Activation("neat_lelu", _neat_lelu),
}


def _neat() -> Any:
    try:
        import neat
    except ImportError:  # pragma: no cover - depends on the environment
        raise ImportError("reading NEAT networks needs neat-python: pip install neat-python") from None
    return neat


def from_neat(genome: Any, config: Any, block_kind: str = "sparse", dtype: torch.dtype = torch.float64) -> Graph:
    """The feed-forward network of a neat-python genome as a :class:`~graphlrp.Graph`.

    The genome and the configuration are read, never modified.

    Parameters
    ----------
    genome : neat.DefaultGenome
        The genome (from a feed-forward configuration).
    config : neat.Config
        Its configuration; the inputs are ``config.genome_config.input_keys`` and the outputs
        ``config.genome_config.output_keys``, in that order.
    block_kind : {'sparse', 'edges', 'dense'}
        How blocks of edges are held.
    dtype : torch.dtype
        Floating dtype of the graph (neat-python computes in float64).

    Returns
    -------
    Graph
        ``graph(x)`` equals ``neat.nn.FeedForwardNetwork.create(genome, config).activate(x)``
        for every row of ``x``; ``graph.original_ids`` holds the NEAT node keys.

    Raises
    ------
    ArgumentTypeError
        (a ``TypeError``) if ``genome`` is not a genome (with ``nodes`` and ``connections``) or
        ``config`` not a configuration (with ``genome_config``).
    InputError
        (a ``ValueError``) if a node uses an aggregation other than ``sum`` or an activation
        function that is not one of neat-python's built-in ones (or that the configuration does
        not define), a connection needed for the outputs leads to a node the genome lacks, or a
        weight, bias or response is NaN or inf; the message names the node or connection.
    NumericRangeError
        (an ``OverflowError``) if a weight times its node's response, or a bias, is beyond the
        range of ``dtype``.
    """
    _check_genome(genome, config)
    network = _neat().nn.FeedForwardNetwork.create(genome, config)
    return from_neat_network(network, block_kind=block_kind, dtype=dtype)


def _check_genome(genome: Any, config: Any) -> None:
    """Refuse what is not a genome and its configuration, and evaluated nodes neat-python cannot evaluate.

    The nodes evaluated are those neat-python's ``FeedForwardNetwork.create`` evaluates: the
    layers ``neat.graphs.feed_forward_layers`` finds over the enabled connections.
    """
    if not isinstance(getattr(genome, "nodes", None), dict) or not isinstance(getattr(genome, "connections", None), dict):
        raise ArgumentTypeError(f"genome must be a neat-python genome (with dicts nodes and connections), "
                                f"got {type(genome).__name__}")
    genome_config = getattr(config, "genome_config", None)
    needed = ("input_keys", "output_keys", "activation_defs", "aggregation_function_defs")
    if genome_config is None or not all(hasattr(genome_config, name) for name in needed):
        raise ArgumentTypeError(f"config must be a neat.Config (with a genome_config), got {type(config).__name__}")
    enabled = [gene.key for gene in genome.connections.values() if gene.enabled]
    layers, _ = _neat().graphs.feed_forward_layers(genome_config.input_keys, genome_config.output_keys, enabled)
    for key in (key for layer in layers for key in layer):
        node = genome.nodes.get(key)
        if node is None:
            raise InputError(f"the genome's connections lead to node {key!r}, which is not among genome.nodes")
        if not genome_config.activation_defs.is_valid(node.activation):
            raise InputError(f"NEAT node {key} uses the activation {node.activation!r}, which the configuration "
                             f"does not define; graphlrp computes: {', '.join(sorted(NEAT_ACTIVATIONS))}")
        if not genome_config.aggregation_function_defs.is_valid(node.aggregation):
            raise InputError(f"NEAT node {key} uses the aggregation {node.aggregation!r}, which the configuration "
                             "does not define; only 'sum' is a weighted sum that graph edges can express")


def from_neat_network(
    network: "FeedForwardNetwork", block_kind: str = "sparse", dtype: torch.dtype = torch.float64
) -> Graph:
    """A ``neat.nn.FeedForwardNetwork`` as a :class:`~graphlrp.Graph`; see :func:`from_neat`."""
    for name in ("input_nodes", "output_nodes", "node_evals"):
        if not hasattr(network, name):
            raise ArgumentTypeError(f"network must be a neat.nn.FeedForwardNetwork, got {type(network).__name__}")
    dtype = checked_dtype(dtype) or torch.get_default_dtype()
    keys = _node_keys(network)
    index = {key: i for i, key in enumerate(keys)}
    bias, activation = _node_attributes(network, index, dtype)
    src, dst, weight = _folded_edges(network, index, dtype)
    graph = graph_from_edges(
        src,
        dst,
        torch.tensor(weight, dtype=dtype),
        bias=torch.tensor(bias, dtype=dtype),
        activation=activation,
        inputs=list(range(len(network.input_nodes))),
        outputs=[index[k] for k in network.output_nodes],
        block_kind=block_kind,
    )
    graph.original_ids = torch.tensor(keys, dtype=torch.long)[graph.original_ids]
    return graph


def _node_keys(network: "FeedForwardNetwork") -> list[int]:
    """Inputs, evaluated nodes, then outputs never evaluated (they keep neat-python's initial 0.0)."""
    evaluated = [node for node, *_ in network.node_evals]
    known = set(network.input_nodes) | set(evaluated)
    return [*network.input_nodes, *evaluated, *(k for k in network.output_nodes if k not in known)]


def _node_attributes(
    network: "FeedForwardNetwork", index: dict[int, int], dtype: torch.dtype
) -> tuple[list[float], list[Activation]]:
    """Bias and activation of every node (inputs and unevaluated nodes: 0 and the identity)."""
    activation_names = {fn: name for name, fn in _neat().activations.ActivationFunctionSet().functions.items()}
    bias = [0.0] * len(index)
    activation = [NEAT_ACTIVATIONS["identity"]] * len(index)
    for node, act_fn, agg_fn, node_bias, _, _ in network.node_evals:
        _check_sum(node, agg_fn)
        activation[index[node]] = _activation(node, act_fn, activation_names)
        bias[index[node]] = checked_number(node_bias, f"NEAT node {node}", "bias", dtype)
    return bias, activation


def _folded_edges(
    network: "FeedForwardNetwork", index: dict[int, int], dtype: torch.dtype
) -> tuple[list[int], list[int], list[float]]:
    """Edge lists with each node's response folded into the weights of its incoming edges."""
    src: list[int] = []
    dst: list[int] = []
    weight: list[float] = []
    for node, _, _, _, response, links in network.node_evals:
        checked_number(response, f"NEAT node {node}", "response", torch.float64)
        for source, w in links:
            connection = f"NEAT connection {source} -> {node}"
            checked_number(w, connection, "weight", torch.float64)
            src.append(index[source])
            dst.append(index[node])
            folded = w * response
            if math.isinf(folded):
                raise NumericRangeError(f"{connection} has weight {w:.6g} × response {response:.6g} = {folded}; "
                                        "the product overflows float64")
            weight.append(checked_number(folded, connection, "weight × response", dtype))
    return src, dst, weight


def _check_sum(node: int, agg_fn: Any) -> None:
    aggregations = _neat().aggregations
    if agg_fn is aggregations.sum_aggregation or agg_fn is sum:
        return
    names = {fn: name for name, fn in aggregations.AggregationFunctionSet().functions.items()}
    name = names.get(agg_fn, getattr(agg_fn, "__name__", repr(agg_fn)))
    raise InputError(
        f"NEAT node {node} aggregates its inputs with {name!r}; only 'sum' is a weighted sum that "
        "graph edges can express"
    )


def _activation(node: int, act_fn: Any, activation_names: dict[Any, str]) -> Activation:
    name = activation_names.get(act_fn)
    if name is None or name not in NEAT_ACTIVATIONS:
        known = ", ".join(sorted(NEAT_ACTIVATIONS))
        described = name or getattr(act_fn, "__name__", repr(act_fn))
        raise InputError(
            f"NEAT node {node} uses the activation function {described!r}, which is not one of "
            f"neat-python's built-in ones graphlrp computes: {known}"
        )
    return NEAT_ACTIVATIONS[name]

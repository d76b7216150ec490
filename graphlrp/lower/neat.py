"""neat-python feed-forward networks as graphs: :func:`from_neat` and :func:`from_neat_network`.

A neat-python node computes ``activation(bias + response · Σ_i w_i a_i)`` (with the ``sum``
aggregation), which is ``activation(Σ_i (response · w_i) a_i + bias)``: the response is folded into
the weights of the node's incoming edges. Other aggregations are not weighted sums and are refused.

The graph computes exactly what ``neat.nn.FeedForwardNetwork.create(genome, config).activate``
computes: the network is built by neat-python itself, so disabled connections and nodes not
needed for the outputs are left out as neat-python leaves them out.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ..activations import Activation, activation_by_name
from ..graph import Graph
from .edges import graph_from_edges

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
    ValueError
        If a node uses an aggregation other than ``sum`` or an activation function that is not
        one of neat-python's built-in ones.
    """
    network = _neat().nn.FeedForwardNetwork.create(genome, config)
    return from_neat_network(network, block_kind=block_kind, dtype=dtype)


def from_neat_network(
    network: "FeedForwardNetwork", block_kind: str = "sparse", dtype: torch.dtype = torch.float64
) -> Graph:
    """A ``neat.nn.FeedForwardNetwork`` as a :class:`~graphlrp.Graph`; see :func:`from_neat`."""
    keys = _node_keys(network)
    index = {key: i for i, key in enumerate(keys)}
    bias, activation = _node_attributes(network, index)
    src, dst, weight = _folded_edges(network, index)
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


def _node_attributes(network: "FeedForwardNetwork", index: dict[int, int]) -> tuple[list[float], list[Activation]]:
    """Bias and activation of every node (inputs and unevaluated nodes: 0 and the identity)."""
    activation_names = {fn: name for name, fn in _neat().activations.ActivationFunctionSet().functions.items()}
    bias = [0.0] * len(index)
    activation = [NEAT_ACTIVATIONS["identity"]] * len(index)
    for node, act_fn, agg_fn, node_bias, _, _ in network.node_evals:
        _check_sum(node, agg_fn)
        activation[index[node]] = _activation(node, act_fn, activation_names)
        bias[index[node]] = node_bias
    return bias, activation


def _folded_edges(network: "FeedForwardNetwork", index: dict[int, int]) -> tuple[list[int], list[int], list[float]]:
    """Edge lists with each node's response folded into the weights of its incoming edges."""
    src: list[int] = []
    dst: list[int] = []
    weight: list[float] = []
    for node, _, _, _, response, links in network.node_evals:
        for source, w in links:
            src.append(index[source])
            dst.append(index[node])
            weight.append(w * response)
    return src, dst, weight


def _check_sum(node: int, agg_fn: Any) -> None:
    aggregations = _neat().aggregations
    if agg_fn is aggregations.sum_aggregation or agg_fn is sum:
        return
    names = {fn: name for name, fn in aggregations.AggregationFunctionSet().functions.items()}
    name = names.get(agg_fn, getattr(agg_fn, "__name__", repr(agg_fn)))
    raise ValueError(
        f"NEAT node {node} aggregates its inputs with {name!r}; only 'sum' is a weighted sum that "
        "graph edges can express"
    )


def _activation(node: int, act_fn: Any, activation_names: dict[Any, str]) -> Activation:
    name = activation_names.get(act_fn)
    if name is None or name not in NEAT_ACTIVATIONS:
        known = ", ".join(sorted(NEAT_ACTIVATIONS))
        described = name or getattr(act_fn, "__name__", repr(act_fn))
        raise ValueError(
            f"NEAT node {node} uses the activation function {described!r}, which is not one of "
            f"neat-python's built-in ones graphlrp computes: {known}"
        )
    return NEAT_ACTIVATIONS[name]

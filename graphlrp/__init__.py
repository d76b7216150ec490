"""graphlrp: Layer-wise Relevance Propagation on an explicit computation graph.

A network is lowered to a graph whose nodes are neurons and whose edges are weighted
connections; every LRP rule is an edge-weight transform and relevance flows back over the edges,
so that relevance is available for every node and every edge.
"""
from . import (analysis, calibration, composites, evaluation, export, frontends, kernels, plot, reductions, rules,
               thresholds)
from .composites import Composite
from . import errors
from .errors import (
    ArgumentTypeError,
    CycleError,
    DeviceError,
    FileFormatError,
    GraphLRPError,
    GraphTooLargeError,
    IndexOutOfRangeError,
    InputError,
    LoweringMismatchError,
    NumericRangeError,
    RuleParameterError,
    UnsupportedModuleError,
)
from .determinism import deterministic
from .explainer import Explainer, explain
from .explanation import Explanation, LevelBalance
from .aggregation import Aggregate, aggregate
from .embeddings import embed, token_relevance
from . import pruning
from .graph import Graph, Level
from .frontends import from_neat, from_neat_network, from_networkx, graph_from_edges, graph_to_networkx, lower

__version__ = "0.1.0"

__all__ = [
    "Aggregate",
    "aggregate",
    "embed",
    "token_relevance",
    "analysis",
    "calibration",
    "ArgumentTypeError",
    "errors",
    "FileFormatError",
    "GraphLRPError",
    "IndexOutOfRangeError",
    "InputError",
    "NumericRangeError",
    "RuleParameterError",
    "evaluation",
    "export",
    "frontends",
    "Composite",
    "CycleError",
    "DeviceError",
    "Explainer",
    "Explanation",
    "Graph",
    "GraphTooLargeError",
    "Level",
    "LevelBalance",
    "LoweringMismatchError",
    "UnsupportedModuleError",
    "composites",
    "deterministic",
    "explain",
    "from_neat",
    "from_neat_network",
    "from_networkx",
    "graph_from_edges",
    "graph_to_networkx",
    "kernels",
    "lower",
    "plot",
    "pruning",
    "reductions",
    "rules",
    "thresholds",
]

"""Front-ends that turn a network into a :class:`~graphlrp.Graph`."""
from .edges import CycleError, graph_from_edges
from .neat import from_neat, from_neat_network
from .networkx_graph import from_networkx, graph_to_networkx
from .torch_modules import lower
from .torchscript import from_torchscript

__all__ = [
    "CycleError", "from_neat", "from_neat_network", "from_networkx", "from_torchscript", "graph_from_edges",
    "graph_to_networkx", "lower",
]

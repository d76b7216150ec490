"""Exceptions graphlrp raises, each naming what is wrong."""


class UnsupportedModuleError(TypeError):
    """A module that cannot be lowered to a graph; the message names its path and type."""


class LoweringMismatchError(RuntimeError):
    """The lowered graph does not compute what the module computes on the example input."""


class GraphTooLargeError(MemoryError):
    """A graph or an edge listing would exceed its memory budget; the message says how large it would be."""

"""Exceptions graphlrp raises, each naming what is wrong."""


class UnsupportedModuleError(TypeError):
    """A module that cannot be lowered to a graph; the message names its path and type."""


class LoweringMismatchError(RuntimeError):
    """The lowered graph does not compute what the module computes on the example input."""

"""Exceptions graphlrp raises, each naming what is wrong.

Every error graphlrp raises derives from :class:`GraphLRPError`, so ``except GraphLRPError``
catches all of them. Each class also derives from the built-in exception a Python user would
expect for that kind of problem (``ValueError`` for a bad value, ``TypeError`` for a wrong type,
``IndexError`` for an index out of range, ...), so code written against the built-ins keeps
working.

======================================  =====================  =======================================
class                                   also a                 raised for
======================================  =====================  =======================================
:class:`InputError`                     ``ValueError``         a bad argument value: wrong shape, NaN
                                                               or inf, an empty batch, a bad option
:class:`ArgumentTypeError`              ``TypeError``          an argument of the wrong type
:class:`IndexOutOfRangeError`           ``IndexError``         a target class, sample or node id out
                                                               of range
:class:`RuleParameterError`             ``ValueError``         a rule or composite parameter that is
                                                               out of range or not finite
:class:`NumericRangeError`              ``OverflowError``      a computation that would overflow the
                                                               graph's dtype (refused before it runs)
:class:`UnsupportedModuleError`         ``TypeError``          a module or operation that cannot be
                                                               lowered (names its path and type)
:class:`LoweringMismatchError`          ``RuntimeError``       a lowered graph that does not compute
                                                               what the model computes
:class:`CycleError`                     ``ValueError``         a cycle in an edge list or networkx
                                                               graph (names one)
:class:`FileFormatError`                ``ValueError``         a file that is not what it should be
                                                               (malformed, wrong kind, unsafe)
:class:`GraphTooLargeError`             ``MemoryError``        work that would exceed a memory budget
:class:`DeviceError`                    ``RuntimeError``       a device or kernel that is not usable
                                                               here (no CUDA, torch_scatter without
                                                               CUDA kernels)
======================================  =====================  =======================================
"""
from __future__ import annotations

from typing import Hashable


class GraphLRPError(Exception):
    """Base class of every exception graphlrp raises."""


class InputError(GraphLRPError, ValueError):
    """An argument has a value graphlrp cannot use; the message names the argument and what is accepted."""


class ArgumentTypeError(GraphLRPError, TypeError):
    """An argument has the wrong type; the message names the argument, the type given and the types accepted."""


class IndexOutOfRangeError(GraphLRPError, IndexError):
    """A target class, sample, node or level index is out of range; the message gives the valid range."""


class RuleParameterError(GraphLRPError, ValueError):
    """A rule or composite parameter is out of range or not finite."""


class NumericRangeError(GraphLRPError, OverflowError):
    """A computation would leave the range of the graph's dtype (inf or NaN); it is refused before it runs."""


class UnsupportedModuleError(GraphLRPError, TypeError):
    """A module that cannot be lowered to a graph; the message names its path and type."""


class LoweringMismatchError(GraphLRPError, RuntimeError):
    """The lowered graph does not compute what the module computes on the example input."""


#: nodes of a cycle spelled out in a :class:`CycleError` message (the attribute holds them all)
CYCLE_MESSAGE_NODES = 20


class CycleError(GraphLRPError, ValueError):
    """The edges contain a cycle; ``cycle`` holds the nodes along one, each with an edge to the next.

    The last node has an edge back to the first. Nodes are given by the caller's ids (or by their
    names when ``names`` were given).
    """

    def __init__(self, cycle: list[Hashable]) -> None:
        self.cycle = cycle
        shown = [repr(node) for node in cycle[:CYCLE_MESSAGE_NODES]]
        more = f" -> ... ({len(cycle)} nodes)" if len(cycle) > CYCLE_MESSAGE_NODES else ""
        super().__init__(
            f"the edges contain a cycle: {' -> '.join(shown)}{more} -> {cycle[0]!r}; a graph must be acyclic"
        )


class FileFormatError(GraphLRPError, ValueError):
    """A file cannot be read: malformed, of another kind, or unsafe to load."""


class GraphTooLargeError(GraphLRPError, MemoryError):
    """A graph or an edge listing would exceed its memory budget; the message says how large it would be."""


class DeviceError(GraphLRPError, RuntimeError):
    """A device, or kernels for it, that this machine or installation does not have; the message
    names what was asked and what is available."""


__all__ = [
    "ArgumentTypeError",
    "CycleError",
    "DeviceError",
    "FileFormatError",
    "GraphLRPError",
    "GraphTooLargeError",
    "IndexOutOfRangeError",
    "InputError",
    "LoweringMismatchError",
    "NumericRangeError",
    "RuleParameterError",
    "UnsupportedModuleError",
]

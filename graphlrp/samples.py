"""Which samples of an explained batch: the one parser of sample selections, and the public
interface of an explanation that consumers (:mod:`graphlrp.export`, :mod:`graphlrp.analysis`)
check their argument against.

A selection is ``None`` (every sample), one index (a Python or numpy int, a 0-d integer tensor or
array: one sample), or a sequence of indices (a list, tuple, range, 1-D integer tensor or array,
a one-element one included: a selection of samples). Negative indices count from the end of the
batch, as in Python.
"""
from __future__ import annotations

import operator
from typing import Protocol, Sequence, runtime_checkable

import numpy as np
from torch import Tensor

from .errors import ArgumentTypeError, IndexOutOfRangeError, InputError

Samples = int | Sequence[int] | None

__all__ = ["ExplanationLike", "Samples", "check_explanation", "is_index", "rows"]


def is_index(value: object) -> bool:
    """Whether ``value`` is one integer index: a Python or numpy int, a 0-d integer tensor or array (not a bool)."""
    if isinstance(value, (bool, np.bool_)) or (isinstance(value, (Tensor, np.ndarray)) and value.ndim != 0):
        return False
    try:
        operator.index(value)
    except TypeError:
        return False
    return True


def rows(sample: Samples, batch: int, allow_empty: bool = False) -> list[int]:
    """The rows of a batch of ``batch`` samples that ``sample`` names, as non-negative ints.

    Parameters
    ----------
    sample : int, sequence of int, or None
        See the module docstring.
    batch : int
        The number of samples.
    allow_empty : bool
        Accept a selection of no samples.

    Raises
    ------
    ArgumentTypeError
        If ``sample`` or one of its entries is not an int.
    IndexOutOfRangeError
        If a sample is out of range for the batch.
    InputError
        If ``sample`` selects no sample and ``allow_empty`` is false (a value over no samples is
        undefined).
    """
    chosen = list(range(batch)) if sample is None else [sample] if is_index(sample) else _listed(sample)
    for row in chosen:
        if not is_index(row):
            raise ArgumentTypeError(f"samples must be ints, got {row!r} ({type(row).__name__})")
        if not -batch <= operator.index(row) < batch:
            raise IndexOutOfRangeError(f"sample {row} is out of range for a batch of {batch} "
                                       f"(-{batch} .. {batch - 1})")
    if not chosen and not allow_empty:
        raise InputError("sample selects no samples; give an int, a non-empty sequence of ints, or None for all")
    return [operator.index(row) % batch for row in chosen]


def _listed(sample: object) -> list[object]:
    if isinstance(sample, (Tensor, np.ndarray)):
        return sample.tolist() if sample.ndim == 1 else [sample]
    if isinstance(sample, (str, bytes, dict, set)) or not hasattr(sample, "__iter__"):
        raise ArgumentTypeError(f"sample must be an int, a sequence of ints or None, got {sample!r} "
                                f"({type(sample).__name__})")
    return list(sample)


@runtime_checkable
class ExplanationLike(Protocol):
    """The public interface of :class:`graphlrp.Explanation` that consumers read."""

    graph: object
    node_relevance: Tensor

    @property
    def activations(self) -> tuple[Tensor, ...]: ...

    def sample_rows(self, sample: Samples, allow_empty: bool = False) -> list[int]: ...

    def edge_relevance(self, sample: Samples = None, max_bytes: int | None = None,
                       out: Tensor | None = None) -> Tensor: ...

    def bias_relevance(self, sample: Samples = None) -> Tensor: ...

    def edge_contributions(self, sample: Samples = None) -> Tensor: ...


def check_explanation(explanation: object, name: str = "explanation") -> None:
    """Raise :class:`ArgumentTypeError` unless ``explanation`` is an :class:`~graphlrp.Explanation`."""
    if not isinstance(explanation, ExplanationLike):
        raise ArgumentTypeError(f"{name} must be a graphlrp.Explanation (from graphlrp.explain), "
                                f"got {type(explanation).__name__}")

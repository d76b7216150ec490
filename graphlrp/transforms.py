"""Named element-wise transforms that rules apply to inputs, weights and biases.

Every transform is a small frozen dataclass: it is hashable (blocks cache transformed weights by
transform), comparable, and has a readable ``repr``. Weight transforms must map 0 to 0, so that a
weight that is not an edge never becomes one (checked by :func:`check_maps_zero_to_zero`).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from .errors import RuleParameterError


class Transform:
    """An element-wise map ``Tensor -> Tensor``; subclasses implement ``__call__``.

    A weight transform that is a linear combination of simpler ones says so in
    :meth:`expansion` (``W⁻ = W − W⁺``), so that the propagation can share products between
    terms, reuse the forward pass for the ``W`` part and cache only ``W⁺``.
    """

    #: the sign all values take (``1``: all ``>= 0``, ``-1``: all ``<= 0``), ``0`` if they may take either
    sign: ClassVar[int] = 0

    def __call__(self, values: Tensor) -> Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def into(self, values: Tensor, out: Tensor) -> Tensor:
        """``self(values)`` written into ``out`` (of ``values``' shape) and returned.

        The transforms below write without a temporary; a transform that does not override this
        computes ``self(values)`` and copies it.
        """
        return out.copy_(self(values))

    def expansion(self) -> tuple[tuple["Transform", float], ...]:
        """``((t_1, c_1), …)`` with ``self(w) = Σ c_k t_k(w)``; by default the transform itself."""
        return ((self, 1.0),)


@dataclass(frozen=True)
class Identity(Transform):
    """``x``."""

    def __call__(self, values: Tensor) -> Tensor:
        return values

    def into(self, values: Tensor, out: Tensor) -> Tensor:
        return out.copy_(values)


@dataclass(frozen=True)
class Positive(Transform):
    """``x⁺ = max(x, 0)``."""

    sign: ClassVar[int] = 1

    def __call__(self, values: Tensor) -> Tensor:
        return values.clamp(min=0)

    def into(self, values: Tensor, out: Tensor) -> Tensor:
        return torch.clamp(values, min=0, out=out)


@dataclass(frozen=True)
class Negative(Transform):
    """``x⁻ = min(x, 0)``."""

    sign: ClassVar[int] = -1

    def __call__(self, values: Tensor) -> Tensor:
        return values.clamp(max=0)

    def into(self, values: Tensor, out: Tensor) -> Tensor:
        return torch.clamp(values, max=0, out=out)

    def expansion(self) -> tuple[tuple[Transform, float], ...]:
        return ((Identity(), 1.0), (Positive(), -1.0))  # x⁻ = x − x⁺


@dataclass(frozen=True)
class Square(Transform):
    """``x²``."""

    sign: ClassVar[int] = 1

    def __call__(self, values: Tensor) -> Tensor:
        return values * values

    def into(self, values: Tensor, out: Tensor) -> Tensor:
        return torch.mul(values, values, out=out)


@dataclass(frozen=True)
class Ones(Transform):
    """``1`` everywhere (an input replaced by ones, as in the w² and flat rules)."""

    sign: ClassVar[int] = 1

    def __call__(self, values: Tensor) -> Tensor:
        return torch.ones_like(values)


@dataclass(frozen=True)
class EdgeIndicator(Transform):
    """``1`` where ``x != 0``, else ``0``: every edge weighs one (the flat rule)."""

    sign: ClassVar[int] = 1

    def __call__(self, values: Tensor) -> Tensor:
        return values.ne(0).to(values.dtype)

    def into(self, values: Tensor, out: Tensor) -> Tensor:
        return torch.ne(values, 0, out=out)  # 1.0 and 0.0 in out's dtype


@dataclass(frozen=True)
class Zero(Transform):
    """``0`` everywhere (a bias left out of a rule)."""

    sign: ClassVar[int] = 1

    def __call__(self, values: Tensor) -> Tensor:
        return torch.zeros_like(values)


@dataclass(frozen=True)
class AddScaledPart(Transform):
    """``x + scale · x⁺`` (``part='positive'``) or ``x + scale · x⁻`` (``part='negative'``).

    The γ rule's weights: ``W↑ = W + γW⁺`` and ``W↓ = W + γW⁻``.
    """

    scale: float
    part: str = "positive"

    def __call__(self, values: Tensor) -> Tensor:
        return self.into(values, torch.empty_like(values))

    def into(self, values: Tensor, out: Tensor) -> Tensor:
        part = torch.clamp(values, min=0, out=out) if self.part == "positive" else torch.clamp(values, max=0, out=out)
        return part.mul_(self.scale).add_(values)

    def expansion(self) -> tuple[tuple[Transform, float], ...]:
        if self.part == "positive":  # x + γx⁺
            return ((Identity(), 1.0), (Positive(), self.scale))
        return ((Identity(), 1.0 + self.scale), (Positive(), -self.scale))  # x + γx⁻ = (1+γ)x − γx⁺


@dataclass(frozen=True)
class InputCombination(Transform):
    """``Σ c_k t_k(x)``: one input for several terms that redistribute the same quotients through
    the same weights (``a⁺ − a⁻ = |a|``, ``l − h``)."""

    parts: tuple[tuple[Transform, float], ...]

    def __call__(self, values: Tensor) -> Tensor:
        (first, c0), *rest = self.parts
        total = first(values) * c0
        for transform, coefficient in rest:
            total = total + transform(values) * coefficient
        return total


@dataclass(frozen=True, eq=False)
class Constant(Transform):
    """A fixed tensor broadcast to the input's shape (the z^B rule's bounds ``l`` and ``h``).

    ``value`` is broadcast against one sample's shape; the result has the batch's shape. Two
    constants are equal when they hold the same tensor object.
    """

    value: Tensor

    def __call__(self, values: Tensor) -> Tensor:
        return self.value.to(device=values.device, dtype=values.dtype).expand_as(values)

    # equal when they hold the same tensor object (comparing values would cost a pass per lookup)
    def __eq__(self, other: object) -> bool:
        return isinstance(other, Constant) and other.value is self.value

    def __hash__(self) -> int:
        return hash((Constant, id(self.value)))


@functools.lru_cache(maxsize=256)
def check_maps_zero_to_zero(transform: Transform) -> None:
    """Raise :class:`~graphlrp.errors.RuleParameterError` if a weight transform maps 0 to a nonzero value (remembered once passed).

    A weight of zero is not an edge; a transform that turned it into a nonzero value would create
    connections that the network does not have.
    """
    image = transform(torch.zeros(1, dtype=torch.float64))
    if bool(image.ne(0).any()):
        raise RuleParameterError(
            f"weight transform {transform!r} maps 0 to {image.item()}; weight transforms must map 0 "
            "to 0 so that absent connections stay absent (use EdgeIndicator instead of Ones)"
        )

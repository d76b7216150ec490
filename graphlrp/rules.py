"""LRP rules as edge-weight transforms.

Every rule has the form (Zennit's, see Montavon et al. 2019)::

    R_i = Σ_g scale_g Σ_j  c^g_ij / stab(Σ_i' c^g_i'j + β^g_j) · R_j · [j served by g]

where a rule is a tuple of :class:`Group` s, each group a tuple of :class:`Term` s, and a term's
contribution on the edge ``i → j`` is ``c_ij = sign · f_in(a_i) · f_w(w_ij)`` with bias term
``β_j = sign · f_b(b_j)``. A group shares one denominator; a group may serve only the destination
nodes whose forward pre-activation is positive (or negative), as the γ rule does.

A new rule is a subclass of :class:`Rule` that returns its groups; see ``examples/custom_rule.py``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from .transforms import (
    AddScaledPart,
    Constant,
    EdgeIndicator,
    Identity,
    Negative,
    Ones,
    Positive,
    Square,
    Transform,
    Zero,
)

Served = Literal["all", "positive", "negative"]
StabilizerKind = Literal["signed", "plain"]


@dataclass(frozen=True)
class Term:
    """One summand of a rule's contribution: ``sign · inputs(a_i) · weights(w_ij)``, bias ``sign · bias(b_j)``."""

    inputs: Transform
    weights: Transform
    bias: Transform
    sign: float = 1.0


@dataclass(frozen=True)
class Group:
    """Terms that share one denominator, scaled by ``scale``, serving the destinations ``served``."""

    terms: tuple[Term, ...]
    scale: float = 1.0
    served: Served = "all"


def _bias(transform: Transform, zero_bias: bool) -> Transform:
    return Zero() if zero_bias else transform


def _format_parameter(value: object) -> str:
    if isinstance(value, Tensor):
        return repr(value.item()) if value.numel() == 1 else f"tensor(shape={tuple(value.shape)})"
    return repr(value)


def _check_finite_nonnegative(name: str, value: float) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be finite and >= 0, got {value}")


class RuleGroups:
    """A rule's groups with their hash computed once: the key under which level plans are cached.

    Equal groups (e.g. of two ``Epsilon()`` made for separate calls) give equal keys.
    """

    __slots__ = ("groups", "_hash")

    def __init__(self, groups: tuple[Group, ...]) -> None:
        self.groups = groups
        self._hash = hash(groups)

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RuleGroups) and (
            self is other or (self._hash == other._hash and self.groups == other.groups)
        )


class Rule:
    """Base class: a rule is its groups plus a stabilizer.

    Parameters
    ----------
    epsilon : float
        Stabilizer added to every denominator.
    stabilizer : {'signed', 'plain'}
        ``'signed'`` (Zennit's): ``z + ε·s(z)`` with ``s(z) = +1`` for ``z >= 0`` else ``-1``;
        ``'plain'`` (the seed notebooks'): ``z + ε``.

    A denominator that is exactly zero after stabilizing gives a zero quotient: the relevance of
    that node is reported as dropped by :meth:`graphlrp.Explanation.conservation`, never NaN.
    """

    def __init__(self, epsilon: float = 1e-6, stabilizer: StabilizerKind = "signed") -> None:
        _check_finite_nonnegative("epsilon", epsilon)
        if stabilizer not in ("signed", "plain"):
            raise ValueError(f"stabilizer must be 'signed' or 'plain', got {stabilizer!r}")
        self.epsilon = float(epsilon)
        self.stabilizer = stabilizer

    def groups(self) -> tuple[Group, ...]:
        """The rule's groups of terms."""
        raise NotImplementedError

    def cached_groups(self) -> RuleGroups:
        """:meth:`groups` with their hash, made once and kept until a parameter of the rule changes."""
        cached = self.__dict__.get("_groups")
        if cached is None:
            cached = self._groups = RuleGroups(self.groups())
        return cached

    def __setattr__(self, name: str, value: object) -> None:
        super().__setattr__(name, value)
        if name != "_groups":  # a changed parameter changes the groups
            self.__dict__.pop("_groups", None)

    def stabilize(self, denominator: Tensor) -> Tensor:
        """Return the stabilized denominator: a new tensor, or ``denominator`` itself when ``ε = 0``."""
        if self.epsilon == 0:
            return denominator
        if self.stabilizer == "plain":
            return denominator + self.epsilon
        # a mask of 1.0 where z >= 0 (both zeros included) and 0.0 elsewhere, then exactly ±ε, then z ± ε rounded once
        signed_epsilon = torch.ge(denominator, 0, out=torch.empty_like(denominator))
        return signed_epsilon.mul_(2 * self.epsilon).sub_(self.epsilon).add_(denominator)

    def label(self) -> str:
        """A short name for tables: the class and its own parameters, e.g. ``Gamma(gamma=0.25)``."""
        common = ("epsilon", "zero_bias", "weights_only", "stabilizer")
        own = [k for k in vars(self) if k not in common and not k.startswith("_")]
        if isinstance(self, Epsilon):
            own = ["epsilon"]
        flags = [k for k in ("zero_bias", "weights_only") if getattr(self, k, False)]
        args = [f"{k}={_format_parameter(getattr(self, k))}" for k in own] + flags
        return f"{type(self).__name__}({', '.join(args)})"

    def __repr__(self) -> str:
        common = ("epsilon", "zero_bias", "weights_only", "stabilizer")
        own = [k for k in vars(self) if k not in common and not k.startswith("_")]
        names = own + [k for k in common if hasattr(self, k)]
        args = ", ".join(f"{k}={_format_parameter(getattr(self, k))}" for k in names)
        return f"{type(self).__name__}({args})"


class Epsilon(Rule):
    """LRP-ε: ``c_ij = a_i w_ij``, ``β_j = b_j``; ``epsilon=0`` is LRP-0 (the z rule).

    Parameters
    ----------
    epsilon : float
        Stabilizer, ``>= 0``.
    zero_bias : bool
        Leave the bias out of the rule (the forward keeps it); Zennit's ``zero_params='bias'``.
    stabilizer : {'signed', 'plain'}
        See :class:`Rule`. ``'plain'`` reproduces the seed notebooks' ``z + ε``.
    """

    def __init__(self, epsilon: float = 1e-6, zero_bias: bool = False, stabilizer: StabilizerKind = "signed") -> None:
        super().__init__(epsilon, stabilizer)
        self.zero_bias = zero_bias

    def groups(self) -> tuple[Group, ...]:
        return (Group((Term(Identity(), Identity(), _bias(Identity(), self.zero_bias)),)),)


class ZPlus(Rule):
    """LRP-z⁺: ``c_ij = a_i⁺ w_ij⁺ + a_i⁻ w_ij⁻``, ``β_j = b_j⁺`` (Zennit's; αβ with α=1, β=0).

    Parameters
    ----------
    epsilon, zero_bias, stabilizer
        As for :class:`Epsilon`.
    weights_only : bool
        Split by the sign of the weights only: ``c_ij = a_i w_ij⁺`` (the seed notebooks' and
        Captum's z⁺). Equal to the default on non-negative inputs.
    """

    def __init__(
        self,
        epsilon: float = 1e-6,
        zero_bias: bool = False,
        stabilizer: StabilizerKind = "signed",
        weights_only: bool = False,
    ) -> None:
        super().__init__(epsilon, stabilizer)
        self.zero_bias = zero_bias
        self.weights_only = weights_only

    def groups(self) -> tuple[Group, ...]:
        bias = _bias(Positive(), self.zero_bias)
        if self.weights_only:
            return (Group((Term(Identity(), Positive(), bias),)),)
        return (Group((Term(Positive(), Positive(), bias), Term(Negative(), Negative(), Zero()))),)


class AlphaBeta(Rule):
    """LRP-αβ: ``α · (positive part) − β · (negative part)``, each part with its own denominator.

    Positive part ``c⁺_ij = a_i⁺ w_ij⁺ + a_i⁻ w_ij⁻`` with ``β⁺_j = b_j⁺``; negative part
    ``c⁻_ij = a_i⁺ w_ij⁻ + a_i⁻ w_ij⁺`` with ``β⁻_j = b_j⁻`` (Zennit's).

    Parameters
    ----------
    alpha, beta : float
        ``alpha, beta >= 0`` and ``alpha - beta == 1``.
    epsilon, zero_bias, stabilizer
        As for :class:`Epsilon`.
    weights_only : bool
        Split by the sign of the weights only (``c⁺ = a w⁺``, ``c⁻ = a w⁻``), as the seed
        notebooks and Captum do.
    """

    def __init__(
        self,
        alpha: float = 2.0,
        beta: float = 1.0,
        epsilon: float = 1e-6,
        zero_bias: bool = False,
        stabilizer: StabilizerKind = "signed",
        weights_only: bool = False,
    ) -> None:
        super().__init__(epsilon, stabilizer)
        _check_finite_nonnegative("alpha", alpha)
        _check_finite_nonnegative("beta", beta)
        if abs(alpha - beta - 1.0) > 1e-12:
            raise ValueError(f"alpha - beta must equal 1 (relevance is conserved), got alpha={alpha}, beta={beta}")
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.zero_bias = zero_bias
        self.weights_only = weights_only

    def groups(self) -> tuple[Group, ...]:
        pos_bias = _bias(Positive(), self.zero_bias)
        neg_bias = _bias(Negative(), self.zero_bias)
        if self.weights_only:
            positive = (Term(Identity(), Positive(), pos_bias),)
            negative = (Term(Identity(), Negative(), neg_bias),)
        else:
            positive = (Term(Positive(), Positive(), pos_bias), Term(Negative(), Negative(), Zero()))
            negative = (Term(Positive(), Negative(), neg_bias), Term(Negative(), Positive(), Zero()))
        groups = [Group(positive, scale=self.alpha)]
        if self.beta != 0:
            groups.append(Group(negative, scale=-self.beta))
        return tuple(groups)


class Gamma(Rule):
    """LRP-γ (generalized, Zennit's): favour contributions of the output's own sign.

    With ``W↑ = W + γW⁺`` and ``W↓ = W + γW⁻``: a destination whose forward pre-activation
    ``z_j > 0`` uses ``c_ij = a_i⁺ W↑_ij + a_i⁻ W↓_ij`` and ``β_j = b_j + γ b_j⁺``; one with
    ``z_j < 0`` uses ``c_ij = a_i⁺ W↓_ij + a_i⁻ W↑_ij`` and ``β_j = b_j + γ b_j⁻``; ``z_j = 0``
    passes no relevance. ``z_j`` always includes the bias, as in Zennit.

    Parameters
    ----------
    gamma : float
        ``>= 0``; ``gamma=0`` is LRP-ε.
    epsilon, zero_bias, stabilizer
        As for :class:`Epsilon`.
    weights_only : bool
        Captum's γ: ``c_ij = a_i W↑_ij``, ``β_j = b_j + γ b_j⁺`` for every destination.
    """

    def __init__(
        self,
        gamma: float = 0.25,
        epsilon: float = 1e-6,
        zero_bias: bool = False,
        stabilizer: StabilizerKind = "signed",
        weights_only: bool = False,
    ) -> None:
        super().__init__(epsilon, stabilizer)
        _check_finite_nonnegative("gamma", gamma)
        self.gamma = float(gamma)
        self.zero_bias = zero_bias
        self.weights_only = weights_only

    def groups(self) -> tuple[Group, ...]:
        up = AddScaledPart(self.gamma, "positive")
        down = AddScaledPart(self.gamma, "negative")
        if self.weights_only:
            return (Group((Term(Identity(), up, _bias(up, self.zero_bias)),)),)
        positive = (Term(Positive(), up, _bias(up, self.zero_bias)), Term(Negative(), down, Zero()))
        negative = (Term(Positive(), down, _bias(down, self.zero_bias)), Term(Negative(), up, Zero()))
        return (Group(positive, served="positive"), Group(negative, served="negative"))


class WSquare(Rule):
    """LRP-w²: ``c_ij = w_ij²`` (inputs replaced by ones), ``β_j = b_j²``.

    Parameters
    ----------
    epsilon, zero_bias, stabilizer
        As for :class:`Epsilon`.
    """

    def __init__(self, epsilon: float = 1e-6, zero_bias: bool = False, stabilizer: StabilizerKind = "signed") -> None:
        super().__init__(epsilon, stabilizer)
        self.zero_bias = zero_bias

    def groups(self) -> tuple[Group, ...]:
        return (Group((Term(Ones(), Square(), _bias(Square(), self.zero_bias)),)),)


class Flat(Rule):
    """LRP-flat: ``c_ij = 1`` on every edge, no bias term.

    Edges are the nonzero weights: on a pruned layer the pruned weights get no share (Zennit's
    ``Flat`` gives them one, as it sees the dense weight matrix).

    Parameters
    ----------
    epsilon, stabilizer
        As for :class:`Epsilon`.
    """

    def groups(self) -> tuple[Group, ...]:
        return (Group((Term(Ones(), EdgeIndicator(), Zero()),)),)


class ZBox(Rule):
    """LRP-z^B for inputs bounded in ``[low, high]``: ``c_ij = a_i w_ij − l_i w_ij⁺ − h_i w_ij⁻``.

    The bias terms ``b − b⁺ − b⁻`` cancel. Meant for the first level (the network input).

    Parameters
    ----------
    low, high : float or Tensor
        Bounds, broadcast to one sample's shape of the level's input (e.g. ``(3, 1, 1)`` per channel).
    epsilon, zero_bias, stabilizer
        As for :class:`Epsilon`.
    """

    def __init__(
        self,
        low: float | Tensor,
        high: float | Tensor,
        epsilon: float = 1e-6,
        zero_bias: bool = False,
        stabilizer: StabilizerKind = "signed",
    ) -> None:
        super().__init__(epsilon, stabilizer)
        low_t = torch.as_tensor(low, dtype=torch.float64)
        high_t = torch.as_tensor(high, dtype=torch.float64)
        if not (torch.isfinite(low_t).all() and torch.isfinite(high_t).all()):
            raise ValueError("ZBox bounds must be finite")
        low_b, high_b = torch.broadcast_tensors(low_t, high_t)
        if bool((low_b > high_b).any()):
            raise ValueError("ZBox needs low <= high everywhere")
        self.low = low_t
        self.high = high_t
        self.zero_bias = zero_bias

    def groups(self) -> tuple[Group, ...]:
        return (
            Group(
                (
                    Term(Identity(), Identity(), _bias(Identity(), self.zero_bias)),
                    Term(Constant(self.low), Positive(), _bias(Positive(), self.zero_bias), sign=-1.0),
                    Term(Constant(self.high), Negative(), _bias(Negative(), self.zero_bias), sign=-1.0),
                )
            ),
        )


class Norm(Epsilon):
    """Zennit's ``Norm`` for sums and average pooling: ``c_ij = a_i w_ij``, no bias, ε = 1e-6.

    The default rule of sum nodes and average-pooling levels: it splits relevance in proportion to
    each input's contribution, which conserves relevance across residual branches.
    """

    def __init__(self, epsilon: float = 1e-6) -> None:
        super().__init__(epsilon, zero_bias=True)

    def __repr__(self) -> str:
        return f"Norm(epsilon={self.epsilon!r})"


class Pass(Rule):
    """Pass relevance through: each destination's relevance is split equally over its incoming edges.

    On a level whose nodes each have one incoming edge (an element-wise layer) this passes
    ``R_i = R_j`` exactly. A node without incoming edges keeps its relevance (reported as dropped).
    """

    def __init__(self) -> None:
        super().__init__(epsilon=0.0)

    def groups(self) -> tuple[Group, ...]:
        return (Group((Term(Ones(), EdgeIndicator(), Zero()),)),)

    def __repr__(self) -> str:
        return "Pass()"

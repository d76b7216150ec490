"""LRP rules as edge-weight transforms.

Every rule has the form (Zennit's, see Montavon et al. 2019)::

    R_i = Σ_g scale_g Σ_j  c^g_ij / stab(Σ_i' c^g_i'j + β^g_j) · R_j · [j served by g]

where a rule is a tuple of :class:`Group` s, each group a tuple of :class:`Term` s, and a term's
contribution on the edge ``i → j`` is ``c_ij = sign · f_in(a_i) · f_w(w_ij)`` with bias term
``β_j = sign · f_b(b_j)``. A group shares one denominator; a group may serve only the destination
nodes whose forward pre-activation is positive (or negative), as the γ rule does.

A new rule is a subclass of :class:`Rule` that returns its groups; see ``examples/custom_rule.py``.
:func:`register_rule` gives it a name, by which :func:`get` builds it and the command line and
:mod:`graphlrp.evaluation` offer it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Real
from typing import Any, Callable, Literal, TypeVar

import torch
from torch import Tensor

from .errors import ArgumentTypeError, InputError, NumericRangeError, RuleParameterError
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


def _largest_image(transform: Transform, bound: float) -> float:
    """``max |f(w)|`` over ``|w| <= bound``, for a transform monotone in ``|w|`` on each sign (all of
    :mod:`graphlrp.transforms` are), evaluated in float64 at ``±bound``."""
    if bound == 0 or isinstance(transform, Zero):
        return 0.0
    ends = torch.tensor([bound, -bound], dtype=torch.float64)
    return float(transform(ends).abs().max())


def _largest_constant(transform: Transform) -> float:
    """``max |c|`` of a constant input (z^B's bounds); 1 for any other input (bounded by the activations)."""
    if isinstance(transform, Constant):
        return float(transform.value.abs().max()) if transform.value.numel() else 0.0
    return 1.0


def _bias(transform: Transform, zero_bias: bool) -> Transform:
    return Zero() if zero_bias else transform


def _format_parameter(value: object) -> str:
    if isinstance(value, Tensor):
        return repr(value.item()) if value.numel() == 1 else f"tensor(shape={tuple(value.shape)})"
    return repr(value)


def _finite_nonnegative(name: str, value: object) -> float:
    """``value`` as a float, if it is a finite number ``>= 0``."""
    if not isinstance(value, Real) or isinstance(value, bool):
        raise ArgumentTypeError(f"{name} must be a number, got {type(value).__name__}")
    if not math.isfinite(value) or value < 0:
        raise RuleParameterError(f"{name} must be finite and >= 0, got {value}")
    return float(value)


def _flag(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise ArgumentTypeError(f"{name} must be True or False, got {value!r}")
    return value


def _stabilizer_kind(name: str, value: object) -> str:
    if value not in ("signed", "plain"):
        raise RuleParameterError(f"{name} must be 'signed' or 'plain', got {value!r}")
    return str(value)


def _finite_bound(name: str, value: object) -> Tensor:
    """A ZBox bound as a float64 tensor of its own (the caller's tensor is not kept)."""
    try:
        bound = torch.as_tensor(value, dtype=torch.float64).detach().clone()
    except (TypeError, ValueError, RuntimeError):
        raise ArgumentTypeError(f"ZBox bound {name} must be a number or a tensor, got {type(value).__name__}") from None
    if not bool(torch.isfinite(bound).all()):
        raise RuleParameterError(f"ZBox bound {name} must be finite, got {_format_parameter(bound)}")
    return bound


def _conserving(rule: "Rule", name: str, value: float) -> None:
    """α − β = 1, checked once both are set."""
    alpha, beta = (value, rule.__dict__.get("beta")) if name == "alpha" else (rule.__dict__.get("alpha"), value)
    if alpha is not None and beta is not None and abs(alpha - beta - 1.0) > 1e-12:
        raise RuleParameterError(
            f"alpha - beta must equal 1 (relevance is conserved), got alpha={alpha}, beta={beta}; "
            f"to change both, make a new AlphaBeta(alpha, beta)"
        )


def _ordered_bounds(rule: "Rule", name: str, value: Tensor) -> None:
    """``low <= high`` everywhere, checked once both are set."""
    low, high = (value, rule.__dict__.get("high")) if name == "low" else (rule.__dict__.get("low"), value)
    if low is None or high is None:
        return
    try:
        low, high = torch.broadcast_tensors(low, high)
    except RuntimeError:
        raise RuleParameterError(
            f"ZBox bounds low {tuple(low.shape)} and high {tuple(high.shape)} do not broadcast together"
        ) from None
    if bool((low > high).any()):
        raise RuleParameterError("ZBox needs low <= high everywhere")


class Parameter:
    """A rule parameter, checked whenever it is assigned: in ``__init__`` and after.

    Parameters
    ----------
    check : callable
        ``check(name, value)`` returns the value to keep (e.g. as a ``float``) or raises
        :class:`~graphlrp.errors.RuleParameterError` (or :class:`~graphlrp.errors.ArgumentTypeError`
        for a value of the wrong type) naming the parameter.
    relation : callable, optional
        ``relation(rule, name, value)`` checks the value against the rule's other parameters
        (``α − β = 1``, ``low <= high``) once those are set.

    A refused value leaves the rule as it was. The value is kept in the rule's ``__dict__`` under
    the parameter's name, so ``vars(rule)`` lists it.
    """

    def __init__(self, check: Callable[[str, Any], Any], relation: Callable[["Rule", str, Any], None] | None = None):
        self.check = check
        self.relation = relation
        self.name = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, rule: "Rule | None", owner: type | None = None) -> Any:
        if rule is None:
            return self
        try:
            return rule.__dict__[self.name]
        except KeyError:
            raise AttributeError(f"{type(rule).__name__} has no {self.name!r}") from None

    def __set__(self, rule: "Rule", value: object) -> None:
        value = self.check(self.name, value)
        if self.relation is not None:
            self.relation(rule, self.name, value)
        rule.__dict__[self.name] = value


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

    Notes
    -----
    A denominator that is exactly zero after stabilizing gives a zero quotient: the relevance of
    that node is reported as dropped by :meth:`graphlrp.Explanation.conservation`, never NaN.

    Every parameter is a :class:`Parameter`: assigning a value out of range, at construction or
    later, raises :class:`~graphlrp.errors.RuleParameterError` naming it. A changed parameter
    changes the rule's groups (:meth:`cached_groups`).
    """

    epsilon = Parameter(_finite_nonnegative)
    stabilizer = Parameter(_stabilizer_kind)
    zero_bias = Parameter(_flag)
    weights_only = Parameter(_flag)

    def __init__(self, epsilon: float = 1e-6, stabilizer: StabilizerKind = "signed") -> None:
        self.epsilon = epsilon
        self.stabilizer = stabilizer

    def groups(self) -> tuple[Group, ...]:
        """The rule's groups of terms."""
        raise NotImplementedError(f"{type(self).__name__} must implement groups()")

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

    def check_range(self, dtype: torch.dtype, max_weight: float, max_bias: float, where: str) -> None:
        """Raise :class:`~graphlrp.errors.NumericRangeError` if the rule leaves the range of ``dtype``
        on weights and biases up to ``max_weight`` and ``max_bias`` in magnitude.

        Checked: ``ε`` (and the ``2ε`` of the signed stabilizer) is representable and not rounded
        to 0; each term's transformed weights and bias (``w²``, ``(1 + γ)w``), times a constant
        input (z^B's bounds), stay below ``torch.finfo(dtype).max``. ``where`` names the level in
        the message. What depends on the activations is checked on the result (:func:`graphlrp.explain`).
        """
        info = torch.finfo(dtype)
        advice = f"at {where}: use a rule parameter in range, or graph.to(dtype=torch.float64)"
        if self.epsilon > 0 and 2 * self.epsilon > info.max:
            raise NumericRangeError(f"epsilon={self.epsilon:g} of {self.label()} overflows {dtype} "
                                    f"(2·epsilon > {info.max:g}) {advice}")
        if 0 < self.epsilon <= info.tiny * info.eps / 2:
            raise NumericRangeError(f"epsilon={self.epsilon:g} of {self.label()} rounds to 0 in {dtype} "
                                    f"(smallest step {info.tiny * info.eps:g}) {advice}")
        for group in self.cached_groups().groups:
            for term in group.terms:
                inputs = _largest_constant(term.inputs)
                weights = _largest_image(term.weights, max_weight)
                bias = _largest_image(term.bias, max_bias)
                reached = {f"{term.weights!r} of weights up to {max_weight:g}": weights,
                           f"{term.bias!r} of biases up to {max_bias:g}": bias,
                           f"input bounds up to {inputs:g} times those weights": inputs * weights}
                for what, value in reached.items():
                    if value > info.max:
                        raise NumericRangeError(f"{self.label()} overflows {dtype} {advice}: {what} reaches "
                                                f"{value:g}, above the largest {dtype} {info.max:g}")

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


#: the registered rules by name, in the order they were registered (see :func:`register_rule`)
RULES: dict[str, type[Rule]] = {}

RuleClass = TypeVar("RuleClass", bound=type[Rule])


def register_rule(name: str) -> Callable[[RuleClass], RuleClass]:
    """Class decorator: register a :class:`Rule` subclass under ``name``.

    Parameters
    ----------
    name : str
        The name :func:`get`, the command line (``--rule``) and :mod:`graphlrp.evaluation` know
        the rule by: lower case, words joined by ``-``.

    Raises
    ------
    InputError
        For a name already registered to another class.
    ArgumentTypeError
        For a decorated object that is not a :class:`Rule` subclass.
    """

    def register(cls: RuleClass) -> RuleClass:
        if not (isinstance(cls, type) and issubclass(cls, Rule)):
            raise ArgumentTypeError(f"register_rule({name!r}) decorates Rule subclasses, got {cls!r}")
        if RULES.get(name, cls) is not cls:
            raise InputError(f"rule name {name!r} is already registered to {RULES[name].__name__}")
        RULES[name] = cls
        return cls

    return register


def names() -> tuple[str, ...]:
    """The names of the registered rules, in the order they were registered."""
    return tuple(RULES)


def get(name: str, **params: Any) -> Rule:
    """The registered rule ``name``, built with ``params``.

    Parameters
    ----------
    name : str
        One of :func:`names`.
    **params
        Passed to the rule's constructor.

    Raises
    ------
    InputError
        For an unknown name (the message lists the registered ones).
    RuleParameterError
        For parameters out of range.
    """
    if name not in RULES:
        raise InputError(f"unknown rule {name!r}; registered: {', '.join(RULES)}")
    return RULES[name](**params)


@register_rule("epsilon")
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


@register_rule("zplus")
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


@register_rule("alphabeta")
class AlphaBeta(Rule):
    """LRP-αβ: ``α · (positive part) − β · (negative part)``, each part with its own denominator.

    Positive part ``c⁺_ij = a_i⁺ w_ij⁺ + a_i⁻ w_ij⁻`` with ``β⁺_j = b_j⁺``; negative part
    ``c⁻_ij = a_i⁺ w_ij⁻ + a_i⁻ w_ij⁺`` with ``β⁻_j = b_j⁻`` (Zennit's).

    Parameters
    ----------
    alpha, beta : float
        ``alpha, beta >= 0`` and ``alpha - beta == 1``; to change them, make a new rule (assigning
        one alone breaks the relation and is refused).
    epsilon, zero_bias, stabilizer
        As for :class:`Epsilon`.
    weights_only : bool
        Split by the sign of the weights only (``c⁺ = a w⁺``, ``c⁻ = a w⁻``), as the seed
        notebooks and Captum do.
    """

    alpha = Parameter(_finite_nonnegative, _conserving)
    beta = Parameter(_finite_nonnegative, _conserving)

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
        self.alpha = alpha
        self.beta = beta
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


@register_rule("gamma")
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

    gamma = Parameter(_finite_nonnegative)

    def __init__(
        self,
        gamma: float = 0.25,
        epsilon: float = 1e-6,
        zero_bias: bool = False,
        stabilizer: StabilizerKind = "signed",
        weights_only: bool = False,
    ) -> None:
        super().__init__(epsilon, stabilizer)
        self.gamma = gamma
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


@register_rule("wsquare")
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


@register_rule("flat")
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


@register_rule("zbox")
class ZBox(Rule):
    """LRP-z^B for inputs bounded in ``[low, high]``: ``c_ij = a_i w_ij − l_i w_ij⁺ − h_i w_ij⁻``.

    The bias terms ``b − b⁺ − b⁻`` cancel. Meant for the first level (the network input).

    Parameters
    ----------
    low, high : float or Tensor
        Bounds, broadcast to one sample's shape of the level's input (e.g. ``(3, 1, 1)`` per channel);
        finite, ``low <= high``. The rule keeps float64 copies.
    epsilon, zero_bias, stabilizer
        As for :class:`Epsilon`.
    """

    low = Parameter(_finite_bound, _ordered_bounds)
    high = Parameter(_finite_bound, _ordered_bounds)

    def __init__(
        self,
        low: float | Tensor,
        high: float | Tensor,
        epsilon: float = 1e-6,
        zero_bias: bool = False,
        stabilizer: StabilizerKind = "signed",
    ) -> None:
        super().__init__(epsilon, stabilizer)
        self.low = low
        self.high = high
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

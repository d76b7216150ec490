"""Which rule for which level: :class:`Composite` and Zennit's preset composites.

The presets are registered by name (:func:`register_composite`), as in Zennit; :func:`get` builds
one by its name, and the command line and :mod:`graphlrp.evaluation` offer the registered names.
"""
from __future__ import annotations

from fnmatch import fnmatchcase
from typing import Any, Callable, Mapping, TypeVar

import torch.nn as nn

from .errors import ArgumentTypeError, InputError
from .graph import Graph, Level, LayerType
from .rules import AlphaBeta, Epsilon, Flat, Gamma, Rule, ZBox, ZPlus

#: layer types with learned weights (Zennit's ``Linear`` type: dense and convolution layers)
LINEAR_TYPES: tuple[type, ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
#: convolution layer types (Zennit's ``Convolution``)
CONVOLUTION_TYPES: tuple[type, ...] = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d)


def _matches_type(layer_type: LayerType, wanted: LayerType | tuple) -> bool:
    candidates = wanted if isinstance(wanted, tuple) else (wanted,)
    for candidate in candidates:
        if isinstance(candidate, str) or isinstance(layer_type, str):
            if layer_type == candidate:
                return True
        elif isinstance(layer_type, type) and issubclass(layer_type, candidate):
            return True
    return False


def _mapping(name: str, value: object) -> dict:
    """``value`` (a mapping or ``None``) as a new dict."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ArgumentTypeError(f"{name} must be a mapping (dict), got {type(value).__name__}")
    return dict(value)


def _check_layer_types(name: str, wanted: object, strings: bool = True) -> None:
    """A layer type (a class, or a string tag when ``strings``) or a non-empty tuple of them."""
    candidates = wanted if isinstance(wanted, tuple) and wanted else (wanted,)
    for candidate in candidates:
        if not (isinstance(candidate, type) or (strings and isinstance(candidate, str))):
            accepted = "classes (e.g. torch.nn.Conv2d) or string tags" if strings else "classes (e.g. torch.nn.Linear)"
            raise ArgumentTypeError(f"{name} must be {accepted}, or tuples of them; got {wanted!r}")


class Composite:
    """Choose a rule for every level of a graph.

    A level's rule is, in this order: ``by_name`` (the level's module path, exact or a
    shell-style pattern such as ``'features.*'``); ``first``, for the first level (in graph order)
    whose type is one of ``first_types``; ``by_type`` (the level's module class, subclasses
    included, or a string tag), the first matching entry; the level's own structural rule
    (``Level.default_rule``: ``Pass`` for max pooling, copies and unfolded batch norms, ``Norm``
    for sums and average pooling, as in Zennit's presets); else ``default``.

    Parameters
    ----------
    by_name : mapping of str to Rule, optional
    by_type : mapping of type (or tuple of types, or str) to Rule, optional
    first : Rule, optional
    default : Rule
        Rule for every other level (default ``Epsilon()``).
    first_types : tuple of type
        Which levels count for ``first`` (default: dense and convolution layers).
    """

    def __init__(
        self,
        by_name: Mapping[str, Rule] | None = None,
        by_type: Mapping[LayerType | tuple, Rule] | None = None,
        first: Rule | None = None,
        default: Rule | None = None,
        first_types: tuple[type, ...] = LINEAR_TYPES,
    ) -> None:
        by_name = _mapping("by_name", by_name)
        by_type = _mapping("by_type", by_type)
        for pattern in by_name:
            if not isinstance(pattern, str):
                raise ArgumentTypeError(f"by_name keys must be module paths or patterns (str), got {pattern!r}")
        for wanted in by_type:
            _check_layer_types("by_type keys", wanted)
        _check_layer_types("first_types", first_types, strings=False)
        for where, rule in [*((f"by_name[{k!r}]", r) for k, r in by_name.items()),
                            *((f"by_type[{k!r}]", r) for k, r in by_type.items()), ("first", first), ("default", default)]:
            if not isinstance(rule, Rule) and not (rule is None and where in ("first", "default")):
                raise ArgumentTypeError(f"composite entries must be graphlrp rules, got {rule!r} for {where}")
        self.by_name = by_name
        self.by_type = by_type
        self.first = first
        self.default = default if default is not None else Epsilon()
        self.first_types = first_types if isinstance(first_types, tuple) else (first_types,)

    def first_level(self, graph: Graph) -> Level | None:
        """The level that ``first`` applies to."""
        return next((l for l in graph.levels[1:] if _matches_type(l.layer_type, self.first_types)), None)

    def rules(self, graph: Graph) -> list[Rule | None]:
        """The rule of every level (``None`` for the input level)."""
        first = self.first_level(graph) if self.first is not None else None
        return [None] + [self._rule_for(level, first) for level in graph.levels[1:]]

    def setting(self) -> tuple:
        """The composite's entries as one hashable value: equal settings choose the same rules
        (rules compare by identity); a changed entry is a new setting."""
        return (tuple(self.by_name.items()), tuple(self.by_type.items()), self.first, self.default, self.first_types)

    def _rule_for(self, level: Level, first: Level | None) -> Rule:
        if level.name in self.by_name:
            return self.by_name[level.name]
        for pattern, rule in self.by_name.items():
            if fnmatchcase(level.name, pattern):
                return rule
        if first is not None and level.index == first.index:
            return self.first
        for wanted, rule in self.by_type.items():
            if _matches_type(level.layer_type, wanted):
                return rule
        if level.default_rule is not None:
            return level.default_rule
        return self.default

    def __repr__(self) -> str:
        parts = [f"{k}={getattr(self, k)!r}" for k in ("by_name", "by_type", "first", "default") if getattr(self, k)]
        return f"{type(self).__name__}({', '.join(parts)})"


#: the registered composites by name, in the order they were registered (see :func:`register_composite`)
COMPOSITES: dict[str, type[Composite]] = {}

CompositeClass = TypeVar("CompositeClass", bound=type[Composite])


def register_composite(name: str) -> Callable[[CompositeClass], CompositeClass]:
    """Class decorator: register a :class:`Composite` subclass under ``name`` (Zennit's ``register_composite``).

    Parameters
    ----------
    name : str
        The name :func:`get`, the command line (``--composite``) and :mod:`graphlrp.evaluation`
        know the composite by: lower case, words joined by ``-``.

    Raises
    ------
    InputError
        For a name already registered to another class.
    ArgumentTypeError
        For a decorated object that is not a :class:`Composite` subclass.
    """

    def register(cls: CompositeClass) -> CompositeClass:
        if not (isinstance(cls, type) and issubclass(cls, Composite)):
            raise ArgumentTypeError(f"register_composite({name!r}) decorates Composite subclasses, got {cls!r}")
        if COMPOSITES.get(name, cls) is not cls:
            raise InputError(f"composite name {name!r} is already registered to {COMPOSITES[name].__name__}")
        COMPOSITES[name] = cls
        return cls

    return register


def names() -> tuple[str, ...]:
    """The names of the registered composites, in the order they were registered."""
    return tuple(COMPOSITES)


def get(name: str, **params: Any) -> Composite:
    """The registered composite ``name``, built with ``params``.

    Parameters
    ----------
    name : str
        One of :func:`names`.
    **params
        Passed to the composite's constructor.

    Raises
    ------
    InputError
        For an unknown name (the message lists the registered ones).
    RuleParameterError
        For parameters out of range.
    """
    if name not in COMPOSITES:
        raise InputError(f"unknown composite {name!r}; registered: {', '.join(COMPOSITES)}")
    return COMPOSITES[name](**params)


@register_composite("epsilon-plus")
class EpsilonPlus(Composite):
    """Zennit's ``EpsilonPlus``: z⁺ on convolutions, ε on dense (``nn.Linear``) layers.

    As in Zennit, z⁺ is applied to convolutions only, so on a network of dense layers this is ε
    everywhere.
    """

    def __init__(self, epsilon: float = 1e-6, stabilizer: float = 1e-6, zero_bias: bool = False) -> None:
        super().__init__(
            by_type={CONVOLUTION_TYPES: ZPlus(stabilizer, zero_bias), nn.Linear: Epsilon(epsilon, zero_bias)},
            default=Epsilon(epsilon, zero_bias),
        )


@register_composite("epsilon-plus-flat")
class EpsilonPlusFlat(Composite):
    """Zennit's ``EpsilonPlusFlat``: flat on the first dense or convolution layer, z⁺ on other
    convolutions, ε on other dense layers."""

    def __init__(self, epsilon: float = 1e-6, stabilizer: float = 1e-6, zero_bias: bool = False) -> None:
        super().__init__(
            by_type={CONVOLUTION_TYPES: ZPlus(stabilizer, zero_bias), nn.Linear: Epsilon(epsilon, zero_bias)},
            first=Flat(stabilizer),
            default=Epsilon(epsilon, zero_bias),
        )


@register_composite("epsilon-alpha2-beta1")
class EpsilonAlpha2Beta1(Composite):
    """Zennit's ``EpsilonAlpha2Beta1``: αβ (α=2, β=1) on convolutions, ε on dense layers.

    As in Zennit, αβ is applied to convolutions only (ε everywhere on a network of dense layers).
    """

    def __init__(self, epsilon: float = 1e-6, stabilizer: float = 1e-6, zero_bias: bool = False) -> None:
        super().__init__(
            by_type={
                CONVOLUTION_TYPES: AlphaBeta(2.0, 1.0, stabilizer, zero_bias),
                nn.Linear: Epsilon(epsilon, zero_bias),
            },
            default=Epsilon(epsilon, zero_bias),
        )


@register_composite("epsilon-gamma-box")
class EpsilonGammaBox(Composite):
    """Zennit's ``EpsilonGammaBox``: z^B on the first convolution, γ on other convolutions, ε on
    dense layers.

    As in Zennit, the z^B rule goes to the first *convolution* only: on a network of dense layers
    this is ε everywhere.

    Parameters
    ----------
    low, high : float or Tensor
        Bounds of the input, broadcast to one sample's shape.
    """

    def __init__(
        self,
        low: float | object,
        high: float | object,
        epsilon: float = 1e-6,
        gamma: float = 0.25,
        stabilizer: float = 1e-6,
        zero_bias: bool = False,
    ) -> None:
        super().__init__(
            by_type={CONVOLUTION_TYPES: Gamma(gamma, stabilizer, zero_bias), nn.Linear: Epsilon(epsilon, zero_bias)},
            first=ZBox(low, high, stabilizer, zero_bias),
            default=Epsilon(epsilon, zero_bias),
            first_types=CONVOLUTION_TYPES,
        )

"""Element-wise activations of graph nodes, by name.

A node applies its activation to its pre-activation ``z = Σ w·a + b``. Relevance passes through an
activation unchanged (Zennit's ``Pass``), the standard LRP treatment of element-wise functions.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from .errors import InputError

ActivationFn = Callable[[Tensor], Tensor]


def _identity(z: Tensor) -> Tensor:
    return z


def _neat_sigmoid(z: Tensor) -> Tensor:
    return torch.sigmoid((5.0 * z).clamp(-60.0, 60.0))


def _neat_tanh(z: Tensor) -> Tensor:
    return torch.tanh((2.5 * z).clamp(-60.0, 60.0))


def _gauss(z: Tensor) -> Tensor:
    return torch.exp(-5.0 * z.clamp(-3.4, 3.4) ** 2)


def _clamped(z: Tensor) -> Tensor:
    return z.clamp(-1.0, 1.0)


def _inv(z: Tensor) -> Tensor:
    return torch.where(z == 0, torch.zeros_like(z), 1.0 / torch.where(z == 0, torch.ones_like(z), z))


def _hat(z: Tensor) -> Tensor:
    return (1.0 - z.abs()).clamp(min=0.0)


def _cube(z: Tensor) -> Tensor:
    return z**3


def _square(z: Tensor) -> Tensor:
    return z**2


def _log(z: Tensor) -> Tensor:
    return torch.log(z.clamp(min=1e-7))


def _exp(z: Tensor) -> Tensor:
    return torch.exp(z.clamp(-60.0, 60.0))


#: Activations known by name. ``sigmoid``/``tanh`` are the standard functions; the ``neat_*``
#: variants and ``gauss``, ``clamped``, ``inv``, ``hat``, ``cube``, ``square``, ``log``, ``exp``,
#: ``abs`` follow neat-python's definitions.
ACTIVATIONS: dict[str, ActivationFn] = {
    "identity": _identity,
    "relu": torch.relu,
    "sigmoid": torch.sigmoid,
    "tanh": torch.tanh,
    "elu": F.elu,
    "selu": F.selu,
    "gelu": F.gelu,
    "silu": F.silu,
    "softplus": F.softplus,
    "leaky_relu": F.leaky_relu,
    "abs": torch.abs,
    "sin": torch.sin,
    "neat_sigmoid": _neat_sigmoid,
    "neat_tanh": _neat_tanh,
    "gauss": _gauss,
    "clamped": _clamped,
    "inv": _inv,
    "hat": _hat,
    "cube": _cube,
    "square": _square,
    "log": _log,
    "exp": _exp,
}


#: activations whose every value is ``>= 0`` (or NaN), whatever the pre-activation: by name here,
#: by module type (``nn.ReLU`` ...) where lowered from torch modules, and NEAT's softplus
NONNEGATIVE = frozenset({"relu", "relu6", "sigmoid", "softplus", "hardsigmoid", "abs", "neat_sigmoid", "gauss",
                         "hat", "square", "exp", "ReLU", "ReLU6", "Sigmoid", "Softplus", "Hardsigmoid",
                         "neat_softplus"})


@dataclass(frozen=True)
class Activation:
    """A named element-wise function; ``fn`` is called on the pre-activation tensor."""

    name: str
    fn: ActivationFn

    def __call__(self, z: Tensor) -> Tensor:
        return self.fn(z)

    @property
    def nonnegative(self) -> bool:
        """Whether every value is ``>= 0`` by the function alone (the last of a chain decides)."""
        return self.name.rsplit(">", 1)[-1] in NONNEGATIVE

    def __repr__(self) -> str:
        return self.name


IDENTITY = Activation("identity", _identity)


def activation_by_name(name: str) -> Activation:
    """Return the activation called ``name``; raise :class:`~graphlrp.errors.InputError` listing the known names."""
    try:
        return Activation(name, ACTIVATIONS[name])
    except KeyError:
        known = ", ".join(sorted(ACTIVATIONS))
        raise InputError(f"unknown activation {name!r}; known activations: {known}") from None


def compose(first: Activation, then: Activation) -> Activation:
    """The activation ``then(first(z))`` (identity is dropped)."""
    if first.name == "identity":
        return then
    if then.name == "identity":
        return first
    return Activation(f"{first.name}>{then.name}", _Chain(first.fn, then.fn))


@dataclass(frozen=True)
class _Chain:
    """``then(first(z))``."""

    first: ActivationFn
    then: ActivationFn

    def __call__(self, z: Tensor) -> Tensor:
        return self.then(self.first(z))

"""Lowering any ``torch.fx``-traceable network: residual additions, concatenations, functional calls.

The model is traced symbolically, shapes are propagated with one sample of the example input,
and every node of the traced graph becomes graph operations on the :class:`GraphBuilder`.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor
from torch.fx.passes.shape_prop import ShapeProp, TensorMetadata

from ..activations import Activation
from ..errors import UnsupportedModuleError
from .builder import GraphBuilder, Value
from .modules import handler_for
from .torch_modules import unsupported

_ACTIVATION_FUNCTIONS: dict[Any, str] = {
    F.relu: "relu", torch.relu: "relu", F.relu6: "relu6", F.leaky_relu: "leaky_relu", F.elu: "elu",
    F.selu: "selu", F.celu: "celu", F.gelu: "gelu", F.silu: "silu", F.mish: "mish", torch.sigmoid: "sigmoid",
    F.sigmoid: "sigmoid", torch.tanh: "tanh", F.tanh: "tanh", F.softplus: "softplus", F.hardtanh: "hardtanh",
    F.hardsigmoid: "hardsigmoid", F.hardswish: "hardswish", F.softsign: "softsign", F.logsigmoid: "logsigmoid",
}
_ACTIVATION_METHODS = {"relu": torch.relu, "sigmoid": torch.sigmoid, "tanh": torch.tanh}
_RESHAPE_METHODS = {"view", "reshape", "flatten", "contiguous", "squeeze", "unsqueeze"}
_RESHAPE_FUNCTIONS = {torch.flatten, torch.reshape, torch.squeeze, torch.unsqueeze}
_ADD = {operator.add, torch.add, operator.iadd}


@dataclass(frozen=True)
class _Bound:
    """``fn(z, *args, **kwargs)``: a functional activation with its extra arguments."""

    fn: Callable[..., Tensor]
    args: tuple
    kwargs: tuple

    def __call__(self, z: Tensor) -> Tensor:
        return self.fn(z, *self.args, **dict(self.kwargs))


class _NotATensor:
    """A traced value that is not a tensor (a size, a shape entry); only used through shapes."""


def _trace(model: nn.Module) -> torch.fx.GraphModule:
    try:
        return torch.fx.symbolic_trace(model)
    except Exception as error:  # torch.fx raises many kinds of errors on untraceable code
        raise UnsupportedModuleError(
            f"model {type(model).__name__} is neither an nn.Sequential of supported modules nor traceable by "
            f"torch.fx ({type(error).__name__}: {error})"
        ) from None


def _shape(node: torch.fx.Node) -> tuple[int, ...] | None:
    meta = node.meta.get("tensor_meta")
    return tuple(meta.shape[1:]) if isinstance(meta, TensorMetadata) else None


def _is_alias(node: torch.fx.Node, modules: dict[str, nn.Module]) -> bool:
    if node.op == "call_method":
        return node.target in _RESHAPE_METHODS
    if node.op == "call_function":
        return node.target in _RESHAPE_FUNCTIONS
    if node.op == "call_module":
        return isinstance(modules[node.target], (nn.Flatten, nn.Unflatten, nn.Identity, nn.Dropout))
    return False


def _exclusive(node: torch.fx.Node, modules: dict[str, nn.Module]) -> bool:
    """Whether ``node``'s value (through reshapes) is used by one consumer only."""
    while True:
        if len(node.users) != 1:
            return False
        if not _is_alias(node, modules) or not node.args:
            return True
        node = node.args[0]


def _where(node: torch.fx.Node) -> str:
    return f"node {node.name!r} ({node.format_node()})"


class _Walker:
    def __init__(self, gm: torch.fx.GraphModule, builder: GraphBuilder, example_input: Tensor) -> None:
        self.gm = gm
        self.builder = builder
        self.example = example_input
        self.modules = dict(gm.named_modules())
        self.values: dict[torch.fx.Node, Any] = {}

    def run(self) -> Value:
        for node in self.gm.graph.nodes:
            if node.op == "output":
                result = self.values[node.args[0]]
                if not isinstance(result, Value):
                    raise UnsupportedModuleError(f"the model's output must be one tensor ({_where(node)})")
                return result
            self.values[node] = getattr(self, f"_{node.op}")(node)
        raise UnsupportedModuleError("the traced model has no output")

    # -- node kinds -----------------------------------------------------------------------------
    def _placeholder(self, node: torch.fx.Node) -> Value:
        if any(isinstance(v, Value) and v.level == 0 for v in self.values.values()):
            raise UnsupportedModuleError(f"models with more than one input are not supported ({_where(node)})")
        return self.builder.input(tuple(self.example.shape[1:]))

    def _get_attr(self, node: torch.fx.Node) -> Tensor:
        owner_path, _, name = node.target.rpartition(".")
        owner = self.gm.get_submodule(owner_path) if owner_path else self.gm
        value = getattr(owner, name)
        return value.detach() if isinstance(value, Tensor) else value

    def _call_module(self, node: torch.fx.Node) -> Value:
        module = self.modules[node.target]
        handler = handler_for(module)
        if handler is None:
            raise unsupported(node.target, module)
        value = self._tensor_arg(node, 0)
        return handler(self.builder, node.target, module, value, _shape(node),
                       _exclusive(node.args[0], self.modules))

    def _call_method(self, node: torch.fx.Node) -> Any:
        if _shape(node) is None:
            return _NotATensor()
        name = node.target
        value = self._tensor_arg(node, 0)
        if name in _RESHAPE_METHODS:
            return self.builder.reshape(value, _shape(node))
        if name in _ACTIVATION_METHODS:
            activation = Activation(name, _ACTIVATION_METHODS[name])
            return self.builder.activation(node.name, value, activation, _exclusive(node.args[0], self.modules))
        if name in ("permute", "transpose"):
            return self._permute(node, value)
        if name == "add":
            return self._add(node)
        raise UnsupportedModuleError(f"unsupported tensor method {name!r} at {_where(node)}")

    def _call_function(self, node: torch.fx.Node) -> Any:
        target = node.target
        if _shape(node) is None:
            return _NotATensor()
        if target in _ADD:
            return self._add(node)
        if target in _RESHAPE_FUNCTIONS:
            return self.builder.reshape(self._tensor_arg(node, 0), _shape(node))
        if target is torch.cat:
            return self._cat(node)
        if target in _ACTIVATION_FUNCTIONS:
            kwargs = {k: v for k, v in node.kwargs.items() if k != "inplace"}
            extra = tuple(a for a in node.args[1:] if not isinstance(a, bool))  # a trailing bool is `inplace`
            activation = Activation(_ACTIVATION_FUNCTIONS[target], _Bound(target, extra, tuple(sorted(kwargs.items()))))
            return self.builder.activation(node.name, self._tensor_arg(node, 0), activation,
                                           _exclusive(node.args[0], self.modules))
        if target is torch.permute:
            return self._permute(node, self._tensor_arg(node, 0))
        if target is F.dropout:
            if self._kwargs(node, ("input", "p", "training", "inplace")).get("training", True):
                raise ValueError(f"dropout in training mode at {_where(node)}; pass training=False or use nn.Dropout")
            return self._tensor_arg(node, 0)
        functional = _FUNCTIONAL.get(target)
        if functional is None:
            name = getattr(target, "__name__", repr(target))
            raise UnsupportedModuleError(f"unsupported operation {name!r} at {_where(node)}")
        return functional(self, node)

    # -- helpers --------------------------------------------------------------------------------
    def _tensor_arg(self, node: torch.fx.Node, position: int) -> Value:
        value = self.values.get(node.args[position]) if isinstance(node.args[position], torch.fx.Node) else None
        if not isinstance(value, Value):
            raise UnsupportedModuleError(f"argument {position} of {_where(node)} must be a tensor computed from the input")
        return value

    def _kwargs(self, node: torch.fx.Node, names: tuple[str, ...]) -> dict[str, Any]:
        """The call's arguments by parameter name (``names``: the parameters in order)."""
        if len(node.args) > len(names):
            raise UnsupportedModuleError(f"too many arguments at {_where(node)}")
        arguments = {**dict(zip(names, node.args)), **node.kwargs}
        return {k: self.values.get(v, v) if isinstance(v, torch.fx.Node) else v for k, v in arguments.items()}

    def _add(self, node: torch.fx.Node) -> Value:
        operands = [self.values.get(a, a) if isinstance(a, torch.fx.Node) else a for a in node.args]
        if node.kwargs.get("alpha", 1) != 1:
            raise UnsupportedModuleError(f"torch.add with alpha != 1 is not supported ({_where(node)})")
        tensors = [o for o in operands if isinstance(o, Value)]
        constants = [o for o in operands if not isinstance(o, Value)]
        if any(isinstance(c, _NotATensor) for c in constants):
            raise UnsupportedModuleError(f"cannot add a non-tensor value at {_where(node)}")
        constant = None
        if constants:
            constant = sum(torch.as_tensor(c, dtype=self.builder.dtype) for c in constants)
            if constant.dim() > 0 and constant.shape[0] == 1 and constant.dim() == len(_shape(node)) + 1:
                constant = constant[0]
        return self.builder.add(node.name, tensors, constant)

    def _cat(self, node: torch.fx.Node) -> Value:
        kwargs = self._kwargs(node, ("tensors", "dim"))
        tensors = node.args[0] if node.args else node.kwargs["tensors"]
        parts = [self.values.get(t) for t in tensors]
        if not all(isinstance(p, Value) for p in parts):
            raise UnsupportedModuleError(f"torch.cat of values not computed from the input at {_where(node)}")
        dim = kwargs.get("dim", 0)
        dim = dim if dim >= 0 else dim + len(parts[0].shape) + 1
        if dim == 0:
            raise UnsupportedModuleError(f"torch.cat along the batch dimension is not supported ({_where(node)})")
        return self.builder.cat(parts, dim - 1)

    def _permute(self, node: torch.fx.Node, value: Value) -> Value:
        rank = len(value.shape) + 1
        if node.target == "transpose" or node.target is torch.transpose:
            a, b = (d % rank for d in node.args[1:3])
            dims = list(range(rank))
            dims[a], dims[b] = dims[b], dims[a]
        else:
            raw = node.args[1:] if node.op == "call_method" else node.args[1]
            dims = [d % rank for d in (raw[0] if len(raw) == 1 and isinstance(raw[0], (tuple, list)) else raw)]
        if dims[0] != 0:
            raise UnsupportedModuleError(f"permuting the batch dimension is not supported ({_where(node)})")
        return self.builder.permute(value, tuple(d - 1 for d in dims[1:]))


def _functional_linear(walker: _Walker, node: torch.fx.Node) -> Value:
    kwargs = walker._kwargs(node, ("input", "weight", "bias"))
    return walker.builder.linear(node.name, nn.Linear, walker._tensor_arg(node, 0), kwargs["weight"],
                                 kwargs.get("bias"))


def _functional_conv(walker: _Walker, node: torch.fx.Node) -> Value:
    kwargs = walker._kwargs(node, ("input", "weight", "bias", "stride", "padding", "dilation", "groups"))
    value = walker._tensor_arg(node, 0)
    dims = len(value.shape) - 1
    layer_type = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[dims]
    padding = kwargs.get("padding", 0)
    if isinstance(padding, str):
        raise UnsupportedModuleError(f"string padding in a functional convolution is not supported ({_where(node)})")

    def expand(v):
        return tuple(v) if isinstance(v, (tuple, list)) else (v,) * dims

    return walker.builder.conv(node.name, layer_type, value, kwargs["weight"], kwargs.get("bias"), _shape(node),
                               expand(kwargs.get("stride", 1)), expand(padding), expand(kwargs.get("dilation", 1)),
                               kwargs.get("groups", 1))


def _functional_pool(module_type: type, names: tuple[str, ...]) -> Callable[[_Walker, torch.fx.Node], Value]:
    def lower_pool(walker: _Walker, node: torch.fx.Node) -> Value:
        kwargs = walker._kwargs(node, ("input", *names))
        kwargs.pop("input")
        if kwargs.get("return_indices"):
            raise UnsupportedModuleError(f"return_indices=True is not supported ({_where(node)})")
        module = module_type(**{k: v for k, v in kwargs.items() if k != "return_indices"})
        handler = handler_for(module)
        return handler(walker.builder, node.name, module, walker._tensor_arg(node, 0), _shape(node), False)

    return lower_pool


_MAX_POOL_PARAMETERS = ("kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices")
_AVG_POOL_PARAMETERS = ("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad", "divisor_override")

_FUNCTIONAL: dict[Any, Callable[[_Walker, torch.fx.Node], Value]] = {
    F.linear: _functional_linear,
    F.conv1d: _functional_conv,
    F.conv2d: _functional_conv,
    F.conv3d: _functional_conv,
    F.max_pool1d: _functional_pool(nn.MaxPool1d, _MAX_POOL_PARAMETERS),
    F.max_pool2d: _functional_pool(nn.MaxPool2d, _MAX_POOL_PARAMETERS),
    F.avg_pool1d: _functional_pool(nn.AvgPool1d, _AVG_POOL_PARAMETERS[:-1]),
    F.avg_pool2d: _functional_pool(nn.AvgPool2d, _AVG_POOL_PARAMETERS),
    F.adaptive_avg_pool1d: _functional_pool(nn.AdaptiveAvgPool1d, ("output_size",)),
    F.adaptive_avg_pool2d: _functional_pool(nn.AdaptiveAvgPool2d, ("output_size",)),
}


def lower_traced(model: nn.Module, example_input: Tensor, builder: GraphBuilder) -> Value:
    """Trace ``model`` with ``torch.fx`` and build its graph; returns the output's value."""
    gm = _trace(model)
    was_training = model.training
    try:
        ShapeProp(gm).propagate(example_input[:1])
    except Exception as error:
        raise UnsupportedModuleError(f"running the traced model failed: {type(error).__name__}: {error}") from None
    finally:
        model.train(was_training)
    return _Walker(gm, builder, example_input).run()
